"""A lean APNs upstream for ``workers.py``: answers every request 200, for a few CPU-us.

Why: the bundled APNs simulator (``simulator.py``) judges each request on the ``h2``
library and costs ~0.18 CPU-ms per notification, about as much as pushd itself; on a
2-core machine that leaves two pushd workers no second core.  This one answers the
same way on the wire -- TLS with ALPN ``h2``, one HEADERS frame per request with
``:status 200`` and an ``apns-id`` and no body, every answer to what one read brought
written back in one send, 1,000 concurrent streams -- but parses only frame headers:
no HPACK decoding, no request judging, no per-request objects.  So pushd does the same
work against it as against the simulator (``workers.py`` reports pushd's CPU-ms per
notification for both), while the upstream's share of the cores falls tenfold.

Why not nginx: tried, and pushd spent ~0.45 instead of ~0.25 CPU-ms per notification
against it, because nginx writes each answer as its own TLS record and adds four
headers (``server``, ``date``, ``content-type``, ``content-length``) that stock nginx
cannot drop: that measures a different upstream, not pushd's workers.

With ``--echo-apns-id`` it also decodes every request's header block (pushd's own
HPACK decoder, one per connection, so a client's dynamic table is followed) and answers
with the request's ``apns-id`` when it carries one, as APNs does: Sygnal's client
(aioapns) sends one and matches answers by it (``sygnal_side.py``).  pushd sends none,
so ``workers.py`` and ``run.py`` leave the flag off and the upstream stays as cheap.

Judging requests (topics, tokens, provider tokens) stays the simulator's job, in the
tests and in ``run.py``'s rows.  Counting does not: like ``simulator.py`` it logs its
answers by status as it exits (``ANSWERS_PREFIX``), and ``workers.py`` checks one 200
per notification sent.  Device tokens and payloads are never decoded, logged or kept.

Prints ``READY <port>`` once listening; exits when its stdin closes (the runner holds
the other end) or after ``--max-seconds``.  One thread, ``selectors``, non-blocking
``ssl`` sockets: the cheapest loop the standard library offers.
"""

from __future__ import annotations

import argparse
import json
import selectors
import socket
import ssl
import sys
import time

from common import ANSWERS_PREFIX, READY_PREFIX

from pushd.simulators.certs import make_self_signed
from pushd.upstream.hpackdec import HeaderDecoder

DEFAULT_MAX_SECONDS = 3600.0
RECEIVE_BYTES = 1 << 18
PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
FRAME_HEADER = 9
DATA, HEADERS, SETTINGS, PING, GOAWAY, CONTINUATION = 0x0, 0x1, 0x4, 0x6, 0x7, 0x9
END_STREAM = ACK = 0x1
END_HEADERS = 0x4
PADDED, PRIORITY = 0x8, 0x20
#: A HEADERS frame's priority fields: stream dependency (4 octets) and weight (1).
PRIORITY_BYTES = 5
APNS_ID = b"apns-id"
#: APNs' stream limit once a provider token is accepted (the simulator's too).
MAX_STREAMS = 1000
#: The simulator's flow-control windows: a client never waits for a WINDOW_UPDATE.
STREAM_WINDOW = 1 << 24
CONNECTION_WINDOW = 1 << 28
DEFAULT_WINDOW = 65535
#: ``:status 200`` (HPACK static table entry 8), then ``apns-id`` as a literal.
_STATUS_200 = b"\x88"
_APNS_ID_NAME = b"\x00\x07apns-id\x24"


def frame(kind: int, flags: int, stream: int, payload: bytes) -> bytes:
    head = len(payload).to_bytes(3, "big") + bytes((kind, flags)) + stream.to_bytes(4, "big")
    return head + payload


def server_preface() -> bytes:
    """SETTINGS (streams, stream window) and the connection window's increase."""
    settings = (3).to_bytes(2, "big") + MAX_STREAMS.to_bytes(4, "big")
    settings += (4).to_bytes(2, "big") + STREAM_WINDOW.to_bytes(4, "big")
    increase = (CONNECTION_WINDOW - DEFAULT_WINDOW).to_bytes(4, "big")
    return frame(SETTINGS, 0, 0, settings) + frame(0x8, 0, 0, increase)


class Connection:
    """One client's TLS socket, its unparsed bytes and its answers not yet sent."""

    def __init__(self, sock: ssl.SSLSocket) -> None:
        self.sock = sock
        self.handshaken = False
        self.preface_seen = False
        self.inbox = bytearray()
        self.outbox = bytearray()
        #: Streams whose END_STREAM came on a HEADERS frame still awaiting CONTINUATION.
        self.ending: set[int] = set()
        self.received_data = 0
        self.closing = False
        #: With ``--echo-apns-id``: the HPACK decoder, the header block being collected,
        #: and the ``apns-id`` of each stream whose request carried one.
        self.decoder: HeaderDecoder | None = None
        self.block = bytearray()
        self.apns_ids: dict[int, bytes] = {}


class LeanApns:
    """The accept loop, the frame loop, and the count of answers."""

    def __init__(self, context: ssl.SSLContext, port: int, *, echo_apns_id: bool = False) -> None:
        self.context = context
        self.echo_apns_id = echo_apns_id
        self.selector = selectors.DefaultSelector()
        self.listener = socket.create_server(("127.0.0.1", port), backlog=128)
        self.listener.setblocking(False)
        self.port: int = self.listener.getsockname()[1]
        self.selector.register(self.listener, selectors.EVENT_READ, None)
        self.answered = 0
        self.stopped = False

    def _answer(self, conn: Connection, stream: int) -> None:
        self.answered += 1
        apns_id = conn.apns_ids.pop(stream, None)
        if apns_id is None:
            apns_id = f"{self.answered:08X}-0000-4000-8000-{stream:012X}".encode()
        payload = _STATUS_200 + _APNS_ID_NAME + apns_id
        conn.outbox += frame(HEADERS, END_STREAM | END_HEADERS, stream, payload)

    def _frames(self, conn: Connection) -> None:
        """Handle every complete frame in the inbox; answers go to the outbox."""
        buf = conn.inbox
        at = 0
        if not conn.preface_seen:
            if len(buf) < len(PREFACE):
                return
            if bytes(buf[: len(PREFACE)]) != PREFACE:
                conn.closing = True
                return
            conn.preface_seen = True
            at = len(PREFACE)
        while len(buf) - at >= FRAME_HEADER:
            length = int.from_bytes(buf[at : at + 3], "big")
            end = at + FRAME_HEADER + length
            if end > len(buf):
                break
            kind, flags = buf[at + 3], buf[at + 4]
            stream = int.from_bytes(buf[at + 5 : at + 9], "big") & 0x7FFFFFFF
            if kind == DATA:
                conn.received_data += length
                if flags & END_STREAM:
                    self._answer(conn, stream)
            elif kind in (HEADERS, CONTINUATION):
                if conn.decoder is not None:
                    self._header_block(conn, kind, flags, stream, buf[at + FRAME_HEADER : end])
                if kind == HEADERS and flags & END_STREAM:
                    conn.ending.add(stream)
                if flags & END_HEADERS and stream in conn.ending:
                    conn.ending.discard(stream)
                    self._answer(conn, stream)
            elif kind == SETTINGS and not flags & ACK:
                conn.outbox += frame(SETTINGS, ACK, 0, b"")
            elif kind == PING and not flags & ACK:
                conn.outbox += frame(PING, ACK, 0, bytes(buf[at + FRAME_HEADER : end]))
            elif kind == GOAWAY:
                conn.closing = True
            at = end
        del buf[:at]
        if conn.received_data >= CONNECTION_WINDOW // 2:
            conn.outbox += frame(0x8, 0, 0, conn.received_data.to_bytes(4, "big"))
            conn.received_data = 0

    @staticmethod
    def _header_block(
        conn: Connection, kind: int, flags: int, stream: int, payload: bytearray
    ) -> None:
        """Collect a request's header block; once whole, keep its ``apns-id``."""
        assert conn.decoder is not None
        if kind == HEADERS:
            if flags & PADDED:
                payload = payload[1 : len(payload) - payload[0]]
            if flags & PRIORITY:
                payload = payload[PRIORITY_BYTES:]
        conn.block += payload
        if flags & END_HEADERS:
            for name, value in conn.decoder.decode(bytes(conn.block), raw=True):
                if name == APNS_ID:
                    conn.apns_ids[stream] = bytes(value)
            conn.block.clear()

    def _close(self, conn: Connection) -> None:
        self.selector.unregister(conn.sock)
        conn.sock.close()

    def _flush(self, conn: Connection) -> None:
        try:
            while conn.outbox:
                sent = conn.sock.send(conn.outbox)
                del conn.outbox[:sent]
        except (ssl.SSLWantWriteError, ssl.SSLWantReadError, BlockingIOError):
            pass
        events = selectors.EVENT_READ | (selectors.EVENT_WRITE if conn.outbox else 0)
        self.selector.modify(conn.sock, events, conn)

    def _readable(self, conn: Connection) -> None:
        if not conn.handshaken:
            try:
                conn.sock.do_handshake()
            except ssl.SSLWantReadError:
                self.selector.modify(conn.sock, selectors.EVENT_READ, conn)
                return
            except ssl.SSLWantWriteError:
                self.selector.modify(conn.sock, selectors.EVENT_READ | selectors.EVENT_WRITE, conn)
                return
            except (OSError, ssl.SSLError):
                self._close(conn)
                return
            conn.handshaken = True
            conn.outbox += server_preface()
        try:
            while True:
                data = conn.sock.recv(RECEIVE_BYTES)
                if not data:
                    conn.closing = True
                    break
                conn.inbox += data
        except (ssl.SSLWantReadError, ssl.SSLWantWriteError, BlockingIOError):
            pass
        except (OSError, ssl.SSLError):
            conn.closing = True
        self._frames(conn)
        self._flush(conn)
        if conn.closing:
            self._close(conn)

    def _accept(self) -> None:
        try:
            raw, _ = self.listener.accept()
        except BlockingIOError:
            return
        raw.setblocking(False)
        raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock = self.context.wrap_socket(raw, server_side=True, do_handshake_on_connect=False)
        conn = Connection(sock)
        if self.echo_apns_id:
            conn.decoder = HeaderDecoder()
        self.selector.register(sock, selectors.EVENT_READ, conn)

    def run(self, stdin_fd: int, deadline: float) -> None:
        self.selector.register(stdin_fd, selectors.EVENT_READ, "stdin")
        while not self.stopped and time.monotonic() < deadline:
            for key, _ in self.selector.select(timeout=1.0):
                if key.data is None:
                    self._accept()
                elif key.data == "stdin":
                    self.stopped = True
                else:
                    self._readable(key.data)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=0, help="port on 127.0.0.1 (0: any)")
    parser.add_argument("--ca-out", required=True, help="write the TLS CA here for pushd")
    parser.add_argument("--max-seconds", type=float, default=DEFAULT_MAX_SECONDS)
    parser.add_argument(
        "--echo-apns-id",
        action="store_true",
        help="decode request headers and answer with the request's apns-id, as APNs does",
    )
    args = parser.parse_args()
    tls = make_self_signed()
    tls.write_ca(args.ca_out)
    server = LeanApns(tls.server_context(), args.port, echo_apns_id=args.echo_apns_id)
    print(f"{READY_PREFIX}{server.port}", flush=True)
    # Anything on stdin, or its end, stops the server (the runner closes it).
    server.run(sys.stdin.fileno(), time.monotonic() + args.max_seconds)
    answers = {"200": server.answered} if server.answered else {}
    print(f"{ANSWERS_PREFIX}{json.dumps(answers)}", file=sys.stderr, flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
