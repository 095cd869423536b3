"""Logging setup: text for a terminal, JSON lines for a log collector.

What is logged is decided where the log calls are (app names, masked tokens, outcomes,
never payloads); this module only decides the shape of a line.
"""

from __future__ import annotations

import json
import logging
import re
import sys
import time

from pushd.config import LogConfig
from pushd.requestid import RequestIdFilter

QUIET_LOGGERS = ("hpack", "h2", "httpx", "httpcore", "hypercorn.access")
CHATTY_LOGGERS = ("httpx",)
#: ``request_tag`` is ``[<request id>] `` on the lines of a delivery (:mod:`.requestid`).
TEXT_FORMAT = "%(asctime)s %(levelname)-7s %(name)s: %(request_tag)s%(message)s"


#: Characters that would let a value in a message start a line of its own, overwrite
#: one on a terminal or make the file binary to grep: C0 controls but tab, DEL, C1
#: controls and Unicode's line and paragraph separators.
_UNSAFE = re.compile("[\x00-\x08\x0a-\x1f\x7f-\x9f\u2028\u2029]")


def _escaped(match: re.Match[str]) -> str:
    return match.group().encode("unicode_escape").decode("ascii")


class TextFormatter(logging.Formatter):
    """:data:`TEXT_FORMAT` with the message on one line, whatever a caller put in it.

    Log calls name caller-supplied values (a Zulip user id, a Mattermost type, an app
    id): one with a line break forged whole lines, ``ERROR`` and ``Traceback`` included,
    in the text log.  Each such character is written as its escape (``\\n``,
    ``\\x00``), in every line at once, rather than trusted to every call site's ``%r``.
    A traceback, appended after the message, keeps its own lines.
    """

    def __init__(self, worker: int | None = None) -> None:
        # A supervisor's workers write to one journal: each line says whose it is (an
        # ALARM or a refused reload appeared once per worker, alike).
        tag = "" if worker is None else f"[worker {worker}] "
        super().__init__(TEXT_FORMAT.replace("%(name)s", tag + "%(name)s", 1))

    def formatMessage(self, record: logging.LogRecord) -> str:
        line = super().formatMessage(record)
        return line if _UNSAFE.search(line) is None else _UNSAFE.sub(_escaped, line)


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message (and the exception type),
    and a supervisor's worker's index."""

    def __init__(self, worker: int | None = None) -> None:
        super().__init__()
        self.worker = worker

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, object] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        if self.worker is not None:
            line["worker"] = self.worker
        request_id = getattr(record, "request_id", "")
        if request_id:
            line["request_id"] = request_id
        if record.exc_info and record.exc_info[1] is not None:
            line["error"] = type(record.exc_info[1]).__name__
            line["traceback"] = self.formatException(record.exc_info)
        return json.dumps(line, ensure_ascii=False)


def setup(config: LogConfig, worker: int | None = None) -> None:
    """Send pushd's logs to stderr (journald picks them up under systemd); ``worker``:
    the index of a supervisor's worker, named on each of its lines."""
    handler = logging.StreamHandler(sys.stderr)
    json_lines = config.format == "json"
    handler.setFormatter(JsonFormatter(worker) if json_lines else TextFormatter(worker))
    handler.addFilter(RequestIdFilter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(config.level.upper())
    quiet_libraries()


def quiet_libraries() -> None:
    """Keep protocol libraries' DEBUG lines out, whatever pushd's own level.

    hpack logs every header block it encodes, ``:path`` (the device token) included,
    and h2 and httpcore log every frame: at DEBUG they would put full tokens in the log
    and drown pushd's own debug lines.
    """
    for noisy in QUIET_LOGGERS:
        logging.getLogger(noisy).setLevel(logging.INFO)
    # httpx logs every request at INFO ("HTTP Request: POST ..."): one line per FCM send.
    for chatty in CHATTY_LOGGERS:
        logging.getLogger(chatty).setLevel(logging.WARNING)
