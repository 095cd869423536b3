"""The Zulip bouncer's pure parts: payload reshaping, validators, rate limit, config."""

from __future__ import annotations

import json
import re
from pathlib import Path

import attrs
import pytest

from pushd import config
from pushd.frontends.zulip import payloads
from pushd.frontends.zulip.wire import RateLimiter, ZulipError, check_hostname, check_token

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


@pytest.mark.parametrize("hostname", ["", "a b", "-x.com", "x.com:99999", "u@x.com", "x" * 129])
def test_invalid_hostnames(hostname: str) -> None:
    with pytest.raises(ZulipError):
        check_hostname(hostname)


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
