"""pushd as a real process: for crash, signal, outage and startup tests.

The in-process fixture (``tests/conftest.py``) is quicker, but what happens to a process
(SIGKILL, SIGTERM, a full disk, an exit code) can only be seen in one.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import attrs
import trio

#: How long a pushd process may take to start listening.
START_TIMEOUT = 30.0
_LISTENING = re.compile(r"listening on (http\S+?)[,\s]")
#: The checkout whose ``pushd`` the process runs (ahead of any installed copy).
ROOT = str(Path(__file__).resolve().parent.parent)


def toml_value(value: Any) -> str:
    """A TOML literal for the simple values test configs use."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(value, list | tuple):
        return "[" + ", ".join(toml_value(item) for item in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k} = {toml_value(v)}" for k, v in value.items()) + "}"
    raise TypeError(f"no TOML for {value!r}")


def write_config(path: Path, sections: dict[str, Any]) -> Path:
    """Write ``sections`` (tables, and ``apps``: a list of tables) as pushd.toml."""
    lines: list[str] = []
    if "metrics" not in sections:  # any free port: tests run side by side
        sections = {**sections, "metrics": {"port": 0}}
    for name, table in sections.items():
        if name == "apps":
            for app in table:
                lines.append("[[apps]]")
                lines += [f"{k} = {toml_value(v)}" for k, v in app.items()]
            continue
        lines.append(f"[{name}]")
        lines += [f"{k} = {toml_value(v)}" for k, v in table.items()]
    path.write_text("\n".join(lines) + "\n")
    return path


@attrs.define
class PushdProcess:
    """One running ``python -m pushd serve``; its stderr is collected line by line."""

    process: trio.Process
    lines: list[str] = attrs.Factory(list)
    url: str = ""
    _exited: trio.Event = attrs.Factory(trio.Event)

    @property
    def log(self) -> str:
        return "\n".join(self.lines)

    def signal(self, signum: int) -> None:
        self.process.send_signal(signum)

    def kill(self) -> None:
        self.process.send_signal(signal.SIGKILL)

    async def wait(self, within: float = 30.0) -> int:
        with trio.fail_after(within):
            await self._exited.wait()
        code = self.process.returncode
        assert code is not None
        return code

    async def wait_for_line(self, pattern: str, within: float = 10.0) -> str:
        """The first stderr line matching ``pattern`` (a regex), waiting for it."""
        compiled = re.compile(pattern)
        with trio.fail_after(within):
            while True:
                for line in self.lines:
                    if compiled.search(line):
                        return line
                if self._exited.is_set():
                    raise AssertionError(f"pushd exited without {pattern!r}:\n{self.log}")
                await trio.sleep(0.02)


async def start_pushd_process(
    nursery: trio.Nursery,
    config: Path,
    *,
    command: Sequence[str] = (),
    env: dict[str, str] | None = None,
    preexec_fn: Callable[[], None] | None = None,
    wait_listening: bool = True,
) -> PushdProcess:
    """Start ``pushd serve --config config`` (after ``command``, e.g. a wrapper such as
    ``unshare``) and wait until it listens; stderr is read in ``nursery``."""
    argv = [*command, sys.executable, "-m", "pushd", "serve", "--config", str(config)]
    environment = {**os.environ, "PYTHONPATH": ROOT, **(env or {})}
    process = await trio.lowlevel.open_process(
        argv, stderr=subprocess.PIPE, env=environment, preexec_fn=preexec_fn
    )
    running = PushdProcess(process)

    async def read() -> None:
        assert process.stderr is not None
        buffer = b""
        try:
            async with process.stderr:
                while True:
                    chunk = await process.stderr.receive_some()
                    if not chunk:
                        break
                    buffer += chunk
                    *complete, buffer = buffer.split(b"\n")
                    running.lines.extend(line.decode(errors="replace") for line in complete)
        except trio.Cancelled:
            # The test is over (its nursery cancelled): a pushd it did not stop would
            # run on for ever, its log going nowhere.
            if process.returncode is None:
                process.kill()
            raise
        if buffer:
            running.lines.append(buffer.decode(errors="replace"))
        await process.wait()
        running._exited.set()

    nursery.start_soon(read)
    if wait_listening:
        line = await running.wait_for_line(r"listening on http", START_TIMEOUT)
        match = _LISTENING.search(line + " ")
        assert match is not None, line
        running.url = match.group(1)
    return running


async def run_cli_process(*args: str) -> subprocess.CompletedProcess[bytes]:
    """``pushd ARGS`` as a process of its own, with a bare environment (no inherited
    PUSHD_* variables); whatever its exit status.  (:func:`tests.storefixtures.run_cli`
    runs it in this process instead, for its exit code alone.)"""
    return await trio.run_process(
        [sys.executable, "-m", "pushd", *args],
        capture_stdout=True,
        capture_stderr=True,
        check=False,
        env={"PYTHONPATH": ROOT, "PATH": "/usr/bin:/bin"},
    )
