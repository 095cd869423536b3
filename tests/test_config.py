"""pushd.toml: the example documents every key, and parses."""

from __future__ import annotations

import re
from pathlib import Path

import attrs

from pushd import config

ROOT = Path(__file__).resolve().parents[1]


def test_the_example_parses_and_only_misses_its_placeholder_files() -> None:
    cfg = config.load(ROOT / "pushd.toml.example")
    assert [(app.name, app.provider) for app in cfg.apps] == [
        ("chat-ios", "apns"),
        ("chat-android", "fcm"),
    ]
    problems = config.check(cfg)
    assert all("no such file" in p or "store.path" in p for p in problems), problems


def test_the_example_documents_every_key() -> None:
    text = (ROOT / "pushd.toml.example").read_text()
    mentioned = set(re.findall(r"^#?\s*([a-z_]+)\s*=", text, flags=re.MULTILINE))
    mentioned |= set(re.findall(r"^#?\s*\[\[?[a-z_]+\.([a-z_]+)\]", text, flags=re.MULTILINE))
    sections = {
        "server": config.ServerConfig,
        "store": config.StoreConfig,
        "log": config.LogConfig,
        "metrics": config.MetricsConfig,
        "retry": config.RetryConfig,
        "upstream": config.UpstreamConfig,
        "apps": config.AppConfig,
        "apps.fcm_apns": config.FcmApnsDefaults,
        "apps.matrix": config.MatrixAppOptions,
        "native": config.NativeConfig,
        "zulip": config.ZulipConfig,
        "mattermost": config.MattermostConfig,
        "mattermost.servers": config.MattermostServer,
        "rocketchat": config.RocketChatConfig,
        "rocketchat.servers": config.RocketChatServer,
        "matrix": config.MatrixConfig,
    }
    for section, cls in sections.items():
        assert f"[{section}]" in text or f"[[{section}]]" in text or f"# [{section}]" in text
        missing = {f.name for f in attrs.fields(cls)} - mentioned
        assert not missing, f"{section}: {missing} not documented in pushd.toml.example"


def test_the_simulator_sample_structures() -> None:
    cfg = config.load(ROOT / "config" / "simulator.toml")
    assert cfg.apps[0].upstream_url == "https://127.0.0.1:2197"
    assert cfg.apps[0].key_file == str(ROOT / "config" / "AuthKey_SIMULATOR1.p8")


def test_the_matrix_sample_structures_and_only_misses_its_placeholder_files() -> None:
    cfg = config.load(ROOT / "config" / "matrix-element.toml")
    served = {app.name: app.matrix.app_ids for app in cfg.apps if app.matrix is not None}
    assert served == {
        "element-ios": ("com.example.element.ios", "com.example.element.ios.*"),
        "element-android": ("com.example.element.android",),
    }
    problems = config.check(cfg)
    assert all("no such file" in p or "store.path" in p for p in problems), problems
