"""``[apps.matrix]`` and ``[matrix]``: check-config names every mistake by its key path."""

from __future__ import annotations

import types
from pathlib import Path
from typing import Any

import pytest
import trio
import trio.testing

from pushd import config
from pushd.frontends.matrix.dedupe import Dedupe
from pushd.frontends.matrix.gateway import MatrixGateway


def _apns(name: str, **matrix: Any) -> dict[str, Any]:
    return {
        "name": name,
        "provider": "apns",
        "topic": "org.example.chat",
        "cert_file": "cert.pem",
        "matrix": matrix,
    }


def _fcm(name: str, **matrix: Any) -> dict[str, Any]:
    return {
        "name": name,
        "provider": "fcm",
        "service_account_file": "sa.json",
        "matrix": matrix,
    }


def _problems(tmp_path: Path, apps: list[dict[str, Any]], **matrix: Any) -> list[str]:
    (tmp_path / "cert.pem").write_text("placeholder")
    data = {"store": {"path": str(tmp_path / "db")}, "apps": apps, "matrix": matrix}
    problems = config.check(config.parse(data, base=tmp_path))
    # The certificate and service account placeholders are not what these tests are about.
    return [p for p in problems if "service_account_file" not in p and "cert_file" not in p]


def test_a_sound_matrix_section_has_no_problems(tmp_path: Path) -> None:
    apps = [
        _apns("ios", app_ids=["im.vector.app.ios", "io.element.*"], push_type="voip"),
        _fcm("android", app_ids=["im.vector.app.android"], fcm_options={"android": {}}),
    ]
    assert _problems(tmp_path, apps, allowed_networks=["10.0.0.0/8", "::1/128"]) == []


@pytest.mark.parametrize(
    ("apps", "matrix", "problem"),
    [
        ([_apns("ios")], {}, "apps[0].matrix.app_ids: name at least one"),
        ([_apns("ios", app_ids=[""])], {}, "apps[0].matrix.app_ids[0]: 1 to 64 characters"),
        ([_apns("ios", app_ids=["a" * 65])], {}, "apps[0].matrix.app_ids[0]: 1 to 64"),
        ([_apns("ios", app_ids=["x"], push_type="loud")], {}, "apps[0].matrix.push_type: one of"),
        (
            [_apns("ios", app_ids=["x"], fcm_options={"android": {}})],
            {},
            'apps[0].matrix.fcm_options: only for provider "fcm"',
        ),
        (
            [_fcm("android", app_ids=["x"], convert_pushkey_to_hex=False)],
            {},
            'apps[0].matrix.convert_pushkey_to_hex: only for provider "apns"',
        ),
        (
            [_fcm("android", app_ids=["x"], fcm_options={"token": "t"})],
            {},
            "apps[0].matrix.fcm_options.token: set by pushd",
        ),
        (
            [_fcm("android", app_ids=["x"], fcm_options={"android": "high"})],
            {},
            "apps[0].matrix.fcm_options.android: must be a table",
        ),
        (
            [_apns("ios", app_ids=["x"]), _apns("ios2", app_ids=["x"])],
            {},
            "apps[1].matrix.app_ids[0]: 'x' is served by 'ios' already",
        ),
        (
            [_apns("ios", app_ids=["x"])],
            {"allowed_networks": ["nope"]},
            "matrix.allowed_networks[0]",
        ),
        ([_apns("ios", app_ids=["x"])], {"answer_within": 0}, "matrix.answer_within: must be"),
        ([_apns("ios", app_ids=["x"])], {"dedupe_seconds": -1}, "matrix.dedupe_seconds: must"),
    ],
)
def test_matrix_mistakes_are_named(
    tmp_path: Path, apps: list[dict[str, Any]], matrix: dict[str, Any], problem: str
) -> None:
    problems = _problems(tmp_path, apps, **matrix)
    assert any(p.startswith(problem) for p in problems), problems


def test_an_unknown_matrix_key_is_named(tmp_path: Path) -> None:
    with pytest.raises(config.ConfigError) as raised:
        config.parse({"apps": [_apns("ios", app_ids=["x"], colour="red")]}, base=tmp_path)
    assert any("apps[0].matrix.colour" in p for p in raised.value.problems)


def test_app_matching_prefers_exact_ids_and_refuses_ambiguous_globs(tmp_path: Path) -> None:
    apps = [
        _apns("one", app_ids=["org.example.app", "org.*"]),
        _apns("two", app_ids=["org.example.?", "*.beta"]),
        _apns("three", app_ids=["org.example.app.beta"]),
    ]
    cfg = config.parse({"apps": apps}, base=tmp_path)
    one_process = types.SimpleNamespace(shared=False)  # matching reads no store
    gateway = MatrixGateway(cfg, store=one_process, dispatcher=None)  # type: ignore[arg-type]

    def served_by(app_id: str) -> str | None:
        app = gateway.match(app_id)
        return None if app is None else app.config.name

    assert served_by("org.example.app") == "one"  # exact, though "org.*" matches too
    assert served_by("org.example.app.beta") == "three"  # exact beats two globs
    assert served_by("org.other") == "one"
    assert served_by("org.example.x") is None  # org.* and org.example.?: ambiguous
    assert served_by("com.x.beta") == "two"
    assert served_by("Org.other") is None  # case-sensitive
    assert served_by("org.example.[a]") == "one"  # only * and ? are special


async def test_dedupe_remembers_for_one_to_two_windows(
    autojump_clock: trio.testing.MockClock,
) -> None:
    dedupe = Dedupe(window=10.0, max_entries=100)
    key = ("app", "key", "$event")
    assert not dedupe.seen(key)
    assert dedupe.seen(key)
    await trio.sleep(15)  # one rotation: still known
    assert dedupe.seen(key)
    await trio.sleep(16)  # two rotations: forgotten, and remembered anew
    assert not dedupe.seen(key)
    assert dedupe.seen(key)


async def test_dedupe_memory_is_bounded() -> None:
    dedupe = Dedupe(window=600.0, max_entries=10)
    first = ("app", "key", "$0")
    dedupe.seen(first)
    for n in range(1, 11):  # two generations of five: the first key is pushed out
        dedupe.seen(("app", "key", f"${n}"))
    assert not dedupe.seen(first)


async def test_dedupe_off() -> None:
    off = Dedupe(window=0.0)
    key = ("app", "key", "$event")
    assert not off.seen(key) and not off.seen(key)
