"""A trio test that skips itself is reported with its own reason (``tests/skipreasons``).

Run in a pytest of its own, on a test written here, with and without the hook: the
reason reaches ``-rs`` only with it.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
REASON = "tinyproxy is not installed here"
INNER = f'''
import pytest
import trio


@pytest.fixture
async def serving():
    async with trio.open_nursery():
        yield


async def test_needs_a_part(serving):
    pytest.skip("{REASON}")
'''


def _run(tmp_path: Path, *plugins: str) -> str:
    (tmp_path / "test_inner.py").write_text(INNER)
    args = [sys.executable, "-m", "pytest", "-rs", "-p", "no:cacheprovider"]
    for plugin in ("pytest_trio.plugin", *plugins):
        args += ["-p", plugin]
    # Only the plugins named: the others' imports (schemathesis, hypothesis) take seconds.
    env = {**os.environ, "PYTHONPATH": str(REPO), "PYTEST_DISABLE_PLUGIN_AUTOLOAD": "1"}
    done = subprocess.run(
        [*args, "-o", "trio_mode=true", "test_inner.py"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


def test_a_trio_tests_own_skip_reason_and_line_are_reported(tmp_path: Path) -> None:
    without = _run(tmp_path)
    assert "1 skipped" in without
    assert REASON not in without  # pytest-trio 0.8 drops it: what the hook is for
    given = _run(tmp_path, "tests.skipreasons")
    line = INNER.splitlines().index(f'    pytest.skip("{REASON}")') + 1
    assert f"SKIPPED [1] test_inner.py:{line}: {REASON}" in given, given
