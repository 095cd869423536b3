"""Keeps the reason a trio test gives when it skips itself.

A test that finds a part missing says so and skips (``pytest.skip("nginx is not
installed (Debian: apt-get install nginx-light)")``, PostgreSQL-only cases on SQLite).
Inside a trio test that skip leaves trio's run in an exception group, and pytest-trio
0.8 answers it with a bare ``pytest.skip()``: ``-ra`` then printed ``Skipped`` at
pytest's own ``python.py``, and the reader could not tell what was missing.  This hook
puts back the message and the line of the skip pytest-trio caught (the bare skip's
``__context__``).  Loaded by ``tests/conftest.py``; checked by ``test_skip_reasons.py``.
"""

from __future__ import annotations

from collections.abc import Generator
from types import TracebackType

import pytest
from _pytest.outcomes import Skipped

#: What pytest records for a skip without a message.
BARE: str = "Skipped"


def _first_skip(error: BaseException) -> Skipped | None:
    """The first :class:`Skipped` among the leaves of ``error``, an exception group."""
    if isinstance(error, Skipped):
        return error
    if isinstance(error, BaseExceptionGroup):
        for inner in error.exceptions:
            found = _first_skip(inner)
            if found is not None:
                return found
    return None


def _where(tb: TracebackType | None) -> tuple[str, int] | None:
    """The file and line that called ``pytest.skip`` (the last frame not hidden)."""
    place = None
    while tb is not None:
        if not tb.tb_frame.f_locals.get("__tracebackhide__"):
            place = (tb.tb_frame.f_code.co_filename, tb.tb_lineno)
        tb = tb.tb_next
    return place


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    report = yield
    longrepr = report.longrepr
    excinfo = call.excinfo
    if not (report.skipped and excinfo is not None and isinstance(longrepr, tuple)):
        return report
    if longrepr[2] != BARE or not isinstance(excinfo.value.__context__, BaseExceptionGroup):
        return report
    given = _first_skip(excinfo.value.__context__)
    if given is None or not given.msg:
        return report
    place = _where(given.__traceback__) or (longrepr[0], longrepr[1])
    report.longrepr = (place[0], place[1], f"Skipped: {given.msg}")
    return report
