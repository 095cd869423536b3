"""The streams open on one HTTP/2 connection: the slots they hold and the send side.

Split from :mod:`pushd.upstream.h2conn` because this is what the pool talks to: how
many stream slots are free, opening a batch's streams (:meth:`StreamTable.open_streams`),
resetting those of a batch that gave up, and sending bodies as the send windows allow.
It changes with the send path (:class:`~pushd.upstream.h2proto.LeanH2`'s
``send_fields``) and the pool's slot accounting, not with how answers are read
(:mod:`pushd.upstream.h2answers`) or how the connection lives
(:mod:`pushd.upstream.h2conn`), which build on it in that order: each layer is a
subclass of the one below, so the hot path calls plain methods, as before the split.

Every stream leaves :attr:`StreamTable._streams` through one of three doors, each of
which frees its slot (:meth:`StreamTable._free`) and offers freed slots to the pool
(:meth:`StreamTable._after_free`): answered (:mod:`pushd.upstream.h2answers`), failed
(:meth:`StreamTable._release`, :meth:`StreamTable._fail_all`) or abandoned by its
owner (:meth:`StreamTable.abandon`).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Sequence
from typing import Self

import trio
from h2.errors import ErrorCodes
from h2.exceptions import H2Error, TooManyStreamsError
from h2.settings import SettingCodes, Settings

from pushd.upstream.h2proto import LeanH2
from pushd.upstream.h2types import (
    Failure,
    Lost,
    Peer,
    RequestBuilder,
    Stream,
    StreamOwner,
    Unprocessed,
)

#: Our receive windows.  Answers are tiny (FCM's JSON bodies too), so these only have to
#: be big enough that flow control never throttles answers; acknowledging data keeps
#: them open.
STREAM_WINDOW = 1 << 20
CONNECTION_WINDOW = 1 << 24
#: SETTINGS_MAX_CONCURRENT_STREAMS we advertise.  The server opens no streams (push is off),
#: but not 0: h2 checks this limit whenever HEADERS arrive for a stream it no longer
#: knows, which is what an answer that crossed our RST_STREAM looks like once the closed
#: stream was pruned.  With 0 that check kills the connection; with 1 it passes and h2
#: answers the stray frame with RST_STREAM, as for any stream closed by reset.
INBOUND_STREAMS = 1
#: Stop opening streams past this id and let the pool replace the connection (ids are
#: 31-bit and odd; leave room for the streams already reserved).
STREAM_ID_LIMIT = (1 << 31) - 1 - 2 * 100_000
#: Drop h2's closed stream records once they outnumber open streams by this much.
PRUNE_SLACK = 256
#: Why a connection that took no new requests closed once its last stream ended.
DRAINED = "drained"


class StreamTable:
    """The open streams of one connection and their slots; see the module docstring.

    ``reserved`` counts the streams open on behalf of the pool; the pool opens streams
    (:meth:`open_streams`) only while ``reserved < max_streams``.  If the server lowers
    SETTINGS_MAX_CONCURRENT_STREAMS below what is in flight, nothing is taken back:
    streams finish, ``reserved`` sinks, and new requests wait until it is below the new
    limit again.  Nothing ever blocks on the lowered limit, so no deadlock.
    """

    def __init__(
        self, *, peer: Peer, app: str, index: int, on_capacity: Callable[[Self], None]
    ) -> None:
        self._peer = peer
        self._log = peer.log
        #: Log prefix: ``apns[app]``, ``fcm[app]``.
        self._app = app
        self.index = index
        #: Called with this connection when slots were freed.  Typed with ``Self`` so
        #: that the pool's callback may take the class it built (the connection); the
        #: methods that call it annotate ``self: Self`` for the same reason.
        self._on_capacity = on_capacity
        self._h2 = LeanH2()
        self._h2.local_settings = Settings(
            client=True,
            initial_values={
                SettingCodes.ENABLE_PUSH: 0,
                SettingCodes.INITIAL_WINDOW_SIZE: STREAM_WINDOW,
                SettingCodes.MAX_CONCURRENT_STREAMS: INBOUND_STREAMS,
            },
        )
        self._streams: dict[int, Stream] = {}
        #: Streams whose body waits for send window, in arrival order.
        self._blocked: dict[int, Stream] = {}
        self._write_wanted = trio.Event()
        self._cancel_scope: trio.CancelScope | None = None
        #: True while the reader handles one read's events: slots freed meanwhile are
        #: offered to the pool once at the end, so waiters get them in one chunk.
        self._in_handle = False
        self._capacity_freed = False
        #: False after GOAWAY or once the connection failed: take no new requests.
        self.accepting = True
        self.max_streams = 0
        self.reserved = 0
        self.lost_reason: str | None = None
        self._goaway_reason: str | None = None
        #: Why :meth:`retire` stopped new requests, for the line when it has drained.
        self._retired_for: str | None = None
        #: When the streams in flight last went from none to some: a stalled connection's
        #: silence counts from then, not from the last frame of an idle spell.
        self._busy_since = 0.0
        #: Wakes the pinger (:class:`~pushd.upstream.h2conn.PoolConnection`): streams
        #: opened on an idle connection, or a request timed out.
        self._pinger_wake = trio.Event()
        #: A request here went unanswered past its deadline: PING now.
        self._ping_wanted = False

    @property
    def free_slots(self) -> int:
        """Stream slots the pool may still use (may be negative after a shrink)."""
        return self.max_streams - self.reserved if self.accepting else 0

    # --- ending -----------------------------------------------------------------------

    def _die(self, reason: str) -> None:
        """Mark the connection failed and stop its tasks (serve() then cleans up)."""
        if self.lost_reason is None:
            if self._goaway_reason is not None:
                reason = f"{reason} after GOAWAY {self._goaway_reason}"
            elif self._retired_for is not None and reason == DRAINED:
                reason = f"{reason}: {self._retired_for}"
            self.lost_reason = reason
        self.accepting = False
        if self._cancel_scope is not None:
            self._cancel_scope.cancel()

    def close(self) -> None:
        """Stop the connection now (the pool is shutting down)."""
        self._die("client closing")

    def retire(self, reason: str) -> None:
        """Take no new requests; close once the streams still open have ended."""
        if self._retired_for is None:
            self._retired_for = reason
        self.accepting = False
        if not self._streams:
            self._die(reason)

    def _fail_all(self, reason: str) -> None:
        streams = list(self._streams.values())
        self._streams.clear()
        self._blocked.clear()
        for stream in streams:
            # Without END_STREAM on the body the server cannot have processed it.
            failure: Failure = (
                Lost(f"connection lost: {reason}") if stream.end_sent else Unprocessed(reason)
            )
            self._free()
            stream.owner.stream_failed(stream, failure)
        if streams:
            self._after_free()

    def _flush(self) -> None:
        """Wake the writer: h2 has queued bytes to send."""
        self._write_wanted.set()

    # --- requests ---------------------------------------------------------------------

    def open_streams(
        self, owner: StreamOwner, indices: Sequence[int], build: RequestBuilder
    ) -> tuple[int, str | None]:
        """Open one stream per index, with the request ``build(index)`` gives; flush once.

        ``build`` returns the encoded header fields (:func:`pushd.upstream.hpack.
        encode_fields`; APNs splices ``:path`` into shared ones) and the body (FCM
        splices the token into a shared message).  Streams open
        in order until one cannot; returns ``(streams opened, why the rest were not)``,
        the reason ``None`` when all opened.  Those not opened were never sent.  The
        caller only asks for as many as :attr:`free_slots` says, so a refusal means APNs
        lowered its limit since, or the connection stopped accepting.
        """
        if not self.accepting:
            return 0, "connection no longer accepting"
        h2 = self._h2
        send = h2.send_fields
        params = h2.stream_params()
        streams = self._streams
        was_idle = not streams
        opened = 0
        failure: str | None = None
        for index in indices:
            fields, body = build(index)
            try:
                stream_id, sent = send(fields, body, params)
            except TooManyStreamsError:
                # The server lowered its limit and we have not seen the SETTINGS event yet: take
                # h2's word for it, so the pool stops offering slots here.
                self.max_streams = h2.remote_settings.max_concurrent_streams
                failure = "stream limit lowered"
                break
            except H2Error as exc:
                self.accepting = False
                failure = f"cannot open stream: {type(exc).__name__}"
                break
            h2.open_count += 1
            self.reserved += 1
            opened += 1
            stream = Stream(stream_id, owner, index)
            streams[stream_id] = stream
            if sent != len(body):
                stream.end_sent = False
                stream.body = body[sent:]
                self._send_body(stream)
            if stream_id >= STREAM_ID_LIMIT:
                self.accepting = False  # let the pool open a fresh connection
                if opened < len(indices):
                    failure = "connection no longer accepting"
                break
        if opened:
            self._flush()
            if was_idle:
                self._busy_since = trio.current_time()
                self._pinger_wake.set()
        return opened, failure

    def abandon(self, owner: StreamOwner) -> list[Stream]:
        """Reset every stream of ``owner`` (it gave up) and free their slots.

        The owner is not called back; it gets the streams and reports them itself.
        """
        gone = [stream for stream in self._streams.values() if stream.owner is owner]
        if not gone:
            return gone
        h2 = self._h2
        for stream in gone:
            sid = stream.stream_id
            del self._streams[sid]
            self._blocked.pop(sid, None)
            with contextlib.suppress(H2Error):
                h2.reset_stream(sid, ErrorCodes.CANCEL)
            self._free()
        self._flush()
        self._after_free()
        return gone

    def _send_body(self, stream: Stream) -> None:
        """Send as much of the body as the send windows allow; park the rest."""
        h2 = self._h2
        sid = stream.stream_id
        body = stream.body
        while body:
            size = min(len(body), h2.local_flow_control_window(sid), h2.max_outbound_frame_size)
            if size <= 0:
                stream.body = body
                self._blocked[sid] = stream
                return
            last = size == len(body)
            h2.send_data(sid, body[:size] if not last else body, end_stream=last)
            body = body[size:]
        stream.body = b""
        stream.end_sent = True

    def _resume_blocked(self) -> None:
        blocked = self._blocked
        self._blocked = {}
        for stream in blocked.values():
            if stream.stream_id in self._streams:
                try:
                    self._send_body(stream)
                except H2Error:
                    self._release(stream, Unprocessed("stream closed before body was sent"))
        self._flush()

    # --- slots ------------------------------------------------------------------------

    def _release(self, stream: Stream, failure: Failure) -> None:
        if self._streams.pop(stream.stream_id, None) is not None:
            self._blocked.pop(stream.stream_id, None)
            self._free()
            stream.owner.stream_failed(stream, failure)
            self._after_free()

    def _free(self) -> None:
        """Slot accounting for a stream just removed from :attr:`_streams`."""
        h2 = self._h2
        h2.open_count -= 1
        self.reserved -= 1
        if len(h2.streams) > 2 * h2.open_count + PRUNE_SLACK:
            h2.prune_closed_streams()

    def _after_free(self: Self) -> None:
        """Slots were freed: close a drained connection, or offer them to the pool."""
        if not self.accepting and not self._streams:
            self._die(DRAINED)
        elif self._in_handle:
            self._capacity_freed = True
        else:
            self._on_capacity(self)
