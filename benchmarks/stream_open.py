"""What opening one APNs request stream costs pushd's HTTP/2 client, in microseconds.

Every device of a batch opens a stream (:meth:`pushd.upstream.h2proto.LeanH2.send_fields`):
the stream's record, its state, its HEADERS and DATA frames.  This times that call
alone, in one process, on a connection whose preface and settings an in-memory h2
server answered: no sockets, no event loop, so the figure moves only with the code
(and the machine's speed), where the load benchmarks' per-device share moves several
percent from run to run.  Medians (min-max) over ``--runs`` runs of ``--streams``.

    .venv/bin/python benchmarks/stream_open.py
    cd /tmp/wt-base && PYTHONPATH=/tmp/wt-base /work/main/.venv/bin/python \\
        /work/main/benchmarks/stream_open.py            # the same on another revision
"""

from __future__ import annotations

import argparse
import inspect
import statistics
import time

from h2.config import H2Configuration
from h2.connection import H2Connection
from h2.settings import SettingCodes
from hpack import NeverIndexedHeaderTuple

from pushd.upstream.h2proto import LeanH2
from pushd.upstream.hpack import encode_fields

HEADERS = [
    (b":method", b"POST"),
    (b":scheme", b"https"),
    (b":authority", b"api.push.apple.com"),
    NeverIndexedHeaderTuple(b":path", b"/3/device/" + b"ab" * 32),
    (b"apns-topic", b"com.example.app"),
    (b"apns-push-type", b"alert"),
]
BODY = b'{"aps":{"alert":{"title":"Alice","body":"hi"}}}'
#: The server's stream limit: above every run's streams, so none is refused.
SERVER_STREAMS = 1 << 20


def connected() -> LeanH2:
    """A client connection past the preface, the server's settings applied and acked."""
    client = LeanH2()
    server = H2Connection(config=H2Configuration(client_side=False, header_encoding=None))
    server.initiate_connection()
    server.update_settings({SettingCodes.MAX_CONCURRENT_STREAMS: SERVER_STREAMS})
    client.initiate_connection()
    server.receive_data(client.data_to_send())
    client.receive_data(server.data_to_send())
    server.receive_data(client.data_to_send())
    client.data_to_send()
    return client


def one_run(streams: int) -> float:
    """Microseconds per stream over ``streams`` streams opened on a fresh connection."""
    client = connected()
    fields = encode_fields(HEADERS)
    # Revisions before stream_params() read the settings per call.
    batched = "params" in inspect.signature(client.send_fields).parameters
    extra = (client.stream_params(),) if batched else ()
    send = client.send_fields
    start = time.perf_counter()
    for _ in range(streams):
        send(fields, BODY, *extra)
        client.open_count += 1
    elapsed = time.perf_counter() - start
    assert len(client.streams) == streams  # every stream opened
    return elapsed / streams * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=9)
    parser.add_argument("--streams", type=int, default=5000)
    args = parser.parse_args()
    figures = [one_run(args.streams) for _ in range(args.runs)]
    print(
        f"send_fields: {statistics.median(figures):.2f} "
        f"({min(figures):.2f}-{max(figures):.2f}) us per stream, "
        f"{args.runs} runs of {args.streams} streams"
    )


if __name__ == "__main__":
    main()
