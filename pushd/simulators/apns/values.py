"""What a test scripts (:class:`SimReply`) and what the simulator records
(:class:`Received`)."""

from __future__ import annotations

import attrs

from pushd.simulators.script import Action, check_action


@attrs.frozen
class SimReply:
    """What the simulator does with one notification, scripted by a test.

    ``action``: ``"reply"`` answers with ``status`` (and ``reason``; 410 also carries
    ``timestamp_ms``, now if ``None``); ``"goaway"`` sends GOAWAY whose ``last_stream_id``
    lies below every unanswered stream, with debug data ``{"reason": reason or
    "Shutdown"}``, then closes without answering, so the client must retry elsewhere;
    ``"drop"`` resets the TCP connection with the stream unanswered.  ``delay`` seconds
    pass first, without holding up other streams.  A ``status`` of 200 with action
    ``"reply"`` does not short-circuit validation: the request must still be valid.
    """

    status: int = 200
    reason: str | None = None
    timestamp_ms: int | None = None
    retry_after: int | None = None
    delay: float = 0.0
    action: Action = attrs.field(default="reply", validator=check_action)


SUCCESS = SimReply()


@attrs.frozen
class Received:
    """One notification that got an answer, as the simulator understood it.

    Header-derived fields are ``None`` when the header was absent or unparsable;
    ``apns_id`` is the id the simulator answered with.  ``payload`` is cut at
    ``MAX_KEPT_BODY`` bytes.  ``at`` is UNIX time.
    """

    token: str
    topic: str | None
    push_type: str | None
    priority: int | None
    expiration: int | None
    collapse_id: str | None
    apns_id: str
    payload: bytes = attrs.field(repr=lambda p: f"<{len(p)} bytes>")
    status: int
    reason: str | None
    connection_id: int
    stream_id: int
    at: float
