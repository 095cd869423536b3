"""``pushd check-config`` and ``pushd reload``: the commands an admin runs around a
config change (check it, then have the running pushd take it)."""

from __future__ import annotations

import argparse
import os
import signal
from pathlib import Path
from typing import Any

from pushd import checkconfig, cli_store, config
from pushd.pidfile import PidFileError, read_pid
from pushd.upstream.fcm.service_account import load_service_account


def cmd_check_config(args: argparse.Namespace) -> int:
    cfg = cli_store.load(args.file)
    if cfg is None:
        return 1
    accounts: dict[str, tuple[str, str]] = {}
    for app in cfg.apps:
        if app.service_account_file is not None:  # loads: check() said so
            account = load_service_account(Path(app.service_account_file).read_bytes())
            accounts[app.name] = (account.project_id, account.client_email)
    print("\n".join(checkconfig.report(args.file, cfg, accounts)))
    return 0


def _target(args: argparse.Namespace, cfg: config.Config | None) -> int | str:
    """The pid to signal, or why there is none."""
    if args.pid is not None:
        if args.pid.isdigit():
            return int(args.pid)
        pid_path = Path(args.pid)
    elif cfg is not None and cfg.server.pid_file is not None:
        pid_path = Path(cfg.server.pid_file)
    else:
        return (
            "no pid: set [server] pid_file in the config or pass --pid "
            "(under systemd: systemctl reload pushd)"
        )
    try:
        return read_pid(pid_path)
    except PidFileError as error:
        return str(error)


def _is_pushd(pid: int) -> bool:
    """Whether ``pid`` runs pushd, as far as /proc tells: where it cannot tell (no such
    process, no /proc, not ours to read), ``kill`` says what is wrong."""
    try:
        command = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return True
    return is_pushd_serve(command.split(b"\0"))


def is_pushd_serve(argv: list[bytes]) -> bool:
    """Whether ``argv`` is ``pushd serve`` (the console script, ``python -m pushd``, or
    a supervisor's worker): a pid file left by a crash may name a process that has
    nothing to do with pushd but ``pushd`` in its command line (``tail -f pushd.log``,
    ``journalctl -u pushd``), which SIGHUP would kill."""
    for index, arg in enumerate(argv):
        program = arg.rsplit(b"/", 1)[-1]
        runs_pushd = program == b"pushd" or (
            arg == b"-m" and index + 1 < len(argv) and argv[index + 1] == b"pushd"
        )
        if runs_pushd:
            start = index + (2 if arg == b"-m" else 1)
            return b"serve" in argv[start:]
    return False


def cmd_reload(args: argparse.Namespace) -> int:
    """Check the config as the running pushd will, then send it SIGHUP.

    Checking first means a broken file is reported here, on the admin's terminal,
    rather than only in pushd's log (pushd refuses it too and keeps running).
    """
    cfg = None
    if args.config is not None:
        cfg = cli_store.load(args.config)
        if cfg is None:
            return cli_store.fail("not reloading: the running pushd keeps its config")
    target = _target(args, cfg)
    if isinstance(target, str):
        return cli_store.fail(target)
    if not _is_pushd(target):
        return cli_store.fail(
            f"process {target} is not pushd (a stale pid file?): not sending SIGHUP, "
            "which would end most other programs"
        )
    try:
        os.kill(target, signal.SIGHUP)
    except ProcessLookupError:
        return cli_store.fail(f"no process {target}: is pushd running?")
    except PermissionError:
        return cli_store.fail(f"not allowed to signal process {target} (run as its user)")
    print(f"sent SIGHUP to pushd (pid {target}); its log says what the reload changed")
    return 0


def add_commands(commands: Any) -> None:
    check = commands.add_parser(
        "check-config", help="check a config file and say what to paste into chat servers"
    )
    check.add_argument("file")
    check.set_defaults(func=cmd_check_config)

    reload = commands.add_parser(
        "reload", help="make the running pushd re-read its config and key files (SIGHUP)"
    )
    reload.add_argument("--config", "-c", help="check this file first; its pid_file names pushd")
    reload.add_argument("--pid", help="pushd's process id, or a pid file")
    reload.set_defaults(func=cmd_reload)
