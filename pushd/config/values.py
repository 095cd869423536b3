"""Checks and readers of single values that several sections share: files, networks,
tokens, proxies."""

from __future__ import annotations

import ipaddress
from pathlib import Path

from pushd.config.constants import MIN_ADMIN_TOKEN
from pushd.upstream.proxy import parse_proxy_url


def check_file(key: str, value: str | None) -> list[str]:
    """A file the config names (``key``): it must exist, be a regular file and readable."""
    if value is None:
        return []
    path = Path(value)
    if not path.exists():
        return [f"{key}: no such file {value}"]
    if not path.is_file():
        return [f"{key}: not a regular file {value}"]
    try:
        path.read_bytes()
    except OSError as error:
        return [f"{key}: cannot read {value}: {error.strerror}"]
    return []


def check_networks(key: str, networks: tuple[str, ...]) -> list[str]:
    """CIDR networks (``10.0.0.0/8``; an address alone is a /32 or /128)."""
    problems = []
    for n, network in enumerate(networks):
        try:
            ipaddress.ip_network(network, strict=False)
        except ValueError:
            problems.append(f"{key}[{n}]: not a network like 10.0.0.0/8")
    return problems


def read_admin_token(path: str | None) -> str | None:
    """The admin token in ``path`` (surrounding whitespace stripped), or None."""
    if path is None:
        return None
    return Path(path).read_text(encoding="utf-8", errors="replace").strip()


def check_token_file(key: str, path: str | None) -> list[str]:
    """A file holding a bearer token (admin, metrics): readable, one long ASCII token."""
    problems = check_file(key, path)
    if problems or path is None:
        return problems
    token = read_admin_token(path) or ""
    # ASCII: it travels in a header, which HTTP does not decode as UTF-8.
    if len(token) < MIN_ADMIN_TOKEN or not all("!" <= c <= "~" for c in token):
        return [
            f"{key}: must hold one token of at least {MIN_ADMIN_TOKEN} "
            "ASCII letters, digits or punctuation"
        ]
    return []


def is_loopback(host: str) -> bool:
    """Whether ``host`` (an address or ``localhost``) is only reachable from here."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def read_password(path: str | None) -> str | None:
    """A password file's text, trailing line breaks stripped (other whitespace is kept)."""
    if path is None:
        return None
    return Path(path).read_text(encoding="utf-8").rstrip("\r\n")


def check_proxy(key: str, url: str | None, password_file: str | None) -> list[str]:
    """Problems with a ``proxy`` and its ``proxy_password_file`` (the password unsaid)."""
    if url is None:
        return [f"{key}.proxy_password_file: set {key}.proxy too"] if password_file else []
    if not url:  # "": direct
        return (
            [f"{key}.proxy_password_file: {key}.proxy is empty (direct)"] if password_file else []
        )
    problems = check_file(f"{key}.proxy_password_file", password_file)
    if problems:
        return problems
    try:
        parse_proxy_url(url, password=read_password(password_file))
    except (ValueError, UnicodeDecodeError) as error:
        problems.append(f"{key}.proxy: {error}")
    return problems
