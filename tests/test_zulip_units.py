"""The Zulip bouncer's pure parts: payload reshaping, validators, rate limit, config."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import attrs
import pytest

from pushd import config
from pushd.frontends.zulip import payloads
from pushd.frontends.zulip.registration import CLOSED, NOT_PINNED, PINNED_ELSEWHERE, refusal
from pushd.frontends.zulip.wire import RateLimiter, ZulipError, check_hostname, check_token
from pushd.model import normalize_zulip_hostname

ROOT = Path(__file__).resolve().parents[1]


def test_removal_truncation_keeps_the_largest_ids_ascending() -> None:
    ids = ",".join(str(n) for n in [5, 300, *range(1000, 1250)])
    cut = payloads.truncate_removal({"event": "remove", "zulip_message_ids": ids})
    kept = [int(n) for n in cut["zulip_message_ids"].split(",")]
    assert kept == list(range(1050, 1250))
    message = {"event": "message", "zulip_message_ids": ids}
    assert payloads.truncate_removal(message) == message
    with pytest.raises(ZulipError):
        payloads.truncate_removal({"event": "remove", "zulip_message_ids": "1,x"})


def test_apns_body_lifts_custom_beside_aps() -> None:
    body = payloads.apns_body({"badge": 0, "custom": {"zulip": {"event": "x"}, "extra": 1}})
    assert json.loads(body) == {"zulip": {"event": "x"}, "extra": 1, "aps": {"badge": 0}}
    assert json.loads(payloads.apns_body({"alert": "hi"})) == {"aps": {"alert": "hi"}}


def test_fcm_values_are_python_strings_as_zulip_sends() -> None:
    data = payloads.fcm_data({"a": 1, "b": True, "c": None, "d": "x"})
    assert data == {"a": "1", "b": "True", "c": "None", "d": "x"}


def test_fcm_priority_defaults_by_event() -> None:
    assert payloads.fcm_priority({}, {"event": "message"}) == "high"
    assert payloads.fcm_priority({}, {"event": "remove"}) == "normal"
    assert payloads.fcm_priority({"priority": "normal"}, {"event": "message"}) == "normal"


def test_deleted_devices_apns_case_variants() -> None:
    have = ["abcd"]
    listed = ["ABCD", "abcd", "ef01"]
    # The first variant matches the stored token; the second and the unknown come back.
    assert payloads.deleted_devices(listed, have, apns=True) == ["abcd", "ef01"]
    assert payloads.deleted_devices(["Tok", "tok"], ["tok"], apns=False) == ["Tok"]


@pytest.mark.parametrize("hostname", ["zulip.example.com", "zulip.example.com:8443", "localhost"])
def test_valid_hostnames(hostname: str) -> None:
    assert check_hostname(hostname) == hostname


@pytest.mark.parametrize(
    "hostname", ["", "a b", "-x.com", "x.com:99999", "u@x.com", "x" * 129, "x.com..", "x..com"]
)
def test_invalid_hostnames(hostname: str) -> None:
    with pytest.raises(ZulipError):
        check_hostname(hostname)


@pytest.mark.parametrize(
    ("hostname", "normal"),
    [
        ("chat.example.com", "chat.example.com"),
        ("CHAT.Example.COM", "chat.example.com"),
        ("chat.example.com.", "chat.example.com"),
        ("chat.example.com:443", "chat.example.com"),
        ("chat.example.com.:0443", "chat.example.com"),
        ("chat.example.com:", "chat.example.com"),
        ("chat.example.com:8443", "chat.example.com:8443"),
        ("Chat.Example.com.:08443", "chat.example.com:8443"),
        ("localhost:80", "localhost:80"),
        # Not hostnames: refused rather than folded onto one that is.
        ("chat.example.com..", None),
        ("\u212aat.example.com", None),  # the Kelvin sign lower-cases to "k"
        ("chat.example.com:0", None),
        ("chat.example.com:65536", None),
        ("chat.example.com:4a3", None),
        ("[::1]:443", None),
        ("", None),
        ("x" * 129, None),
    ],
)
def test_hostnames_are_normalised_to_one_form(hostname: str, normal: str | None) -> None:
    assert normalize_zulip_hostname(hostname) == normal
    if normal is not None:
        assert normalize_zulip_hostname(normal) == normal


ORG = "7c2a5d3e-1f4b-4c6d-8e9f-0a1b2c3d4e5f"
OTHER = "00000000-0000-4000-8000-000000000001"


@pytest.mark.parametrize(
    ("mode", "known", "pinned", "expected"),
    [
        # A pin admits its own org id and nobody else, in open and allowlist mode alike.
        ("allowlist", False, ORG, None),
        ("allowlist", False, ORG.upper(), PINNED_ELSEWHERE),  # pins are stored lower case
        ("allowlist", False, OTHER, PINNED_ELSEWHERE),
        ("allowlist", False, None, NOT_PINNED),
        ("open", False, OTHER, PINNED_ELSEWHERE),
        ("open", False, None, None),
        # Closed admits no new server, pinned or not; a known one may take a free name.
        ("closed", False, ORG, CLOSED),
        ("closed", False, None, CLOSED),
        ("closed", True, None, None),
        ("closed", True, OTHER, PINNED_ELSEWHERE),
        ("allowlist", True, None, NOT_PINNED),
        ("allowlist", True, ORG, None),
    ],
)
def test_registration_policy(
    mode: Any, known: bool, pinned: str | None, expected: str | None
) -> None:
    assert refusal(mode, known=known, org_id=ORG.upper(), pinned=pinned) == expected


def test_apns_tokens_are_hex_and_stored_lower_case() -> None:
    assert check_token("ABCD", 1) == "abcd"
    for bad in ("abc", "zz", "ab cd"):
        with pytest.raises(ZulipError):
            check_token(bad, 1)
    assert check_token("Mixed:Case", 2) == "Mixed:Case"


def test_rate_limiter_sliding_window() -> None:
    limiter = RateLimiter(2, window=60)
    assert limiter.check("s", 0.0) is None
    assert limiter.check("s", 10.0) is None
    assert limiter.check("s", 20.0) == pytest.approx(40.0)
    assert limiter.check("other", 20.0) is None
    assert limiter.check("s", 60.5) is None


def test_the_example_documents_the_zulip_section() -> None:
    text = (ROOT / "pushd.toml.example").read_text()
    assert "[zulip]" in text
    mentioned = set(re.findall(r"^#?\s*([a-z_]+)\s*=", text, flags=re.MULTILINE))
    assert {f.name for f in attrs.fields(config.ZulipConfig)} <= mentioned
    assert config.load(ROOT / "pushd.toml.example").zulip.fcm_app == "chat-android"


def test_zulip_config_is_checked(tmp_path: Path) -> None:
    data = {
        "store": {"path": str(tmp_path / "db.sqlite3")},
        "zulip": {"fcm_app": "nope", "rate_limit": 0},
    }
    problems = config.check(config.parse(data, base=tmp_path))
    assert "zulip.fcm_app: no app named 'nope'" in problems
    assert "zulip.rate_limit: must be at least 1" in problems
    with pytest.raises(config.ConfigError):
        config.parse({"zulip": {"registration": "maybe"}}, base=tmp_path)


def test_a_bare_allowlist_hostname_is_refused_with_its_fix(tmp_path: Path) -> None:
    with pytest.raises(config.ConfigError) as raised:
        config.parse({"zulip": {"allowlist": ["chat.example.com"]}}, base=tmp_path)
    (problem,) = raised.value.problems
    assert problem.startswith(
        "zulip.allowlist[0]: a bare hostname admits whoever registers it first; "
        'pin its zulip_org_id: {hostname = "chat.example.com", org_id = "'
    )
    assert "pushd zulip servers allow chat.example.com --org-id" in problem


def test_allowlist_pins_are_checked(tmp_path: Path) -> None:
    pins = [
        {"hostname": "chat.example.com", "org_id": ORG},
        {"hostname": "CHAT.example.com.:443", "org_id": OTHER},
        {"hostname": "bad host", "org_id": "not-a-uuid"},
        {"hostname": "ok.example.com", "org_id": ORG.upper()},
    ]
    data = {"store": {"path": str(tmp_path / "db.sqlite3")}, "zulip": {"allowlist": pins}}
    assert config.check(config.parse(data, base=tmp_path)) == [
        "zulip.allowlist[1]: chat.example.com is pinned to another org_id above",
        "zulip.allowlist[2].hostname: not a hostname like chat.example.com[:port]",
        "zulip.allowlist[2].org_id: not a UUID (the server's zulip_org_id)",
    ]
    with pytest.raises(config.ConfigError, match=r"zulip.allowlist\[0\].org_id: required key"):
        config.parse({"zulip": {"allowlist": [{"hostname": "x.com"}]}}, base=tmp_path)
