"""Reading pushd.toml: TOML, structured by cattrs, relative paths resolved."""

from __future__ import annotations

import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import attrs

from pushd.config.checks import check, check_apart
from pushd.config.protocols import ZulipPinConfig
from pushd.config.root import Config, ConfigError
from pushd.typed import CONVERTER, describe_error


def _resolve(base: Path, value: str | None) -> str | None:
    if value is None:
        return None
    path = Path(value).expanduser()
    return str(path if path.is_absolute() else base / path)


def _resolve_paths(config: Config, base: Path) -> Config:
    apps = tuple(
        attrs.evolve(
            app,
            key_file=_resolve(base, app.key_file),
            cert_file=_resolve(base, app.cert_file),
            cert_password_file=_resolve(base, app.cert_password_file),
            service_account_file=_resolve(base, app.service_account_file),
            upstream_ca_file=_resolve(base, app.upstream_ca_file),
            proxy_password_file=_resolve(base, app.proxy_password_file),
        )
        for app in config.apps
    )
    upstream = attrs.evolve(
        config.upstream,
        proxy_password_file=_resolve(base, config.upstream.proxy_password_file),
    )
    server = attrs.evolve(
        config.server,
        tls_cert=_resolve(base, config.server.tls_cert),
        tls_key=_resolve(base, config.server.tls_key),
        admin_token_file=_resolve(base, config.server.admin_token_file),
        pid_file=_resolve(base, config.server.pid_file),
    )
    store = attrs.evolve(
        config.store,
        path=_resolve(base, config.store.path) or config.store.path,
        password_file=_resolve(base, config.store.password_file),
    )
    spool = attrs.evolve(
        config.spool, key_file=_resolve(base, config.spool.key_file) or config.spool.key_file
    )
    metrics = attrs.evolve(
        config.metrics, bearer_token_file=_resolve(base, config.metrics.bearer_token_file)
    )
    return attrs.evolve(
        config,
        apps=apps,
        server=server,
        store=store,
        spool=spool,
        upstream=upstream,
        metrics=metrics,
    )


def _structure_pin(value: Any, kind: Any) -> ZulipPinConfig:
    """An allowlist entry; a bare hostname (the old form) is refused with its fix.

    Before pins, a bare hostname admitted whichever server registered it first, which
    anyone who can reach pushd can do.  Starting with such an entry silently ignored
    would leave the real server refused without a word, so the file is refused instead.
    """
    if isinstance(value, str):
        raise ValueError(
            "a bare hostname admits whoever registers it first; pin its zulip_org_id: "
            f'{{hostname = "{value}", org_id = "<zulip_org_id in its '
            '/etc/zulip/zulip-secrets.conf>"}'
            f" (or drop it and run: pushd zulip servers allow {value} --org-id <zulip_org_id>)"
        )
    if not isinstance(value, dict):
        raise TypeError('expected a table like {hostname = "...", org_id = "..."}')
    pin: ZulipPinConfig = _STRUCTURE_PIN_TABLE(value, kind)
    return pin


_STRUCTURE_PIN_TABLE = CONVERTER.gen_structure_attrs_fromdict(ZulipPinConfig)
CONVERTER.register_structure_hook(ZulipPinConfig, _structure_pin)


def parse(data: dict[str, Any], *, base: Path, source: str | None = None) -> Config:
    """Structure a TOML document into a Config, or raise ConfigError with every problem."""
    problems = list(_nul_characters(data, ""))
    if problems:
        raise ConfigError(problems)
    try:
        config = CONVERTER.structure(data, Config)
    except Exception as error:  # cattrs raises a tree of errors; flatten them all
        raise ConfigError(describe_error(error)) from None
    if data.get("source") is not None:
        raise ConfigError(["source: unknown key (check its spelling and section)"])
    return attrs.evolve(_resolve_paths(config, base), source=source)


def _nul_characters(value: Any, key: str) -> Iterator[str]:
    """Every string of the document holding a NUL character, by key path: TOML allows
    one (``"\\u0000"``), but no setting can hold it (the system cannot look up a file
    name with one: checking it raised a traceback)."""
    if isinstance(value, str) and "\0" in value:
        yield f"{key}: contains a NUL character"
    elif isinstance(value, dict):
        for name, item in value.items():
            yield from _nul_characters(item, f"{key}.{name}" if key else str(name))
    elif isinstance(value, list):
        for index, item in enumerate(value):
            yield from _nul_characters(item, f"{key}[{index}]")


def read_config(path: str | Path) -> bytes:
    """The config file's bytes; ConfigError saying why they cannot be read."""
    try:
        return Path(path).read_bytes()
    except FileNotFoundError:
        raise ConfigError([f"{path}: no such file"]) from None
    except PermissionError:
        raise ConfigError([f"{path}: not readable by this user"]) from None
    except OSError as error:
        raise ConfigError([f"{path}: {error.strerror}"]) from None


def load(path: str | Path, text: bytes | None = None) -> Config:
    """Read and structure ``path``; raise ConfigError naming each problem.

    ``text``: that file's contents as read before (what a supervisor last accepted, for
    a worker it starts): used instead of the file, whose directory still anchors
    relative paths, and which a reload reads again."""
    path = Path(path)
    if text is None:
        text = read_config(path)
    try:
        data = tomllib.loads(text.decode())
    except UnicodeDecodeError:
        raise ConfigError([f"{path}: not UTF-8 (TOML files are)"]) from None
    except tomllib.TOMLDecodeError as error:
        raise ConfigError([f"{path}: not valid TOML: {error}"]) from None
    return parse(data, base=path.resolve().parent, source=str(path))


def load_checked(path: str | Path, text: bytes | None = None) -> Config:
    """Load (see :func:`load`) and check; raise ConfigError listing every problem."""
    config = load(path, text)
    problems = check(config)
    if problems:
        raise ConfigError(problems)
    return config


def load_serving(path: str | Path, text: bytes | None = None) -> tuple[Config, dict[str, str]]:
    """:func:`load_checked` for ``serve``'s start: the config, and the apps whose
    credential files are unusable, by name, each with what is wrong (one line).

    Those apps start paused instead of stopping every app (:mod:`pushd.unusable`);
    any other problem still refuses the config, as :func:`load_checked` does."""
    config = load(path, text)
    # A file name the system cannot look up is the config's fault: it is no app's
    # credential problem (check_apart returns none then), so it refuses the start.
    problems, found = check_apart(config)
    theirs = {problem for listed in found.values() for problem in listed}
    if any(problem not in theirs for problem in problems):
        raise ConfigError(problems)
    return config, {name: "; ".join(listed) for name, listed in found.items() if listed}
