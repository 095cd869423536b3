"""An APNs look-alike: HTTP/2 over TLS, validating requests the way Apple does.

It serves three masters: pushd's tests (faults on demand, a record of what arrived),
benchmarks (thousands of notifications a second on one core) and ``pushd simulate``.

Why a raw ``h2`` server rather than hypercorn: APNs changes ``SETTINGS_MAX_CONCURRENT_
STREAMS`` while a connection lives (1 until a request carries a valid provider token, then
~1000; back to 1 after a rejected notification until the next success), and clients must
cope with that.  Hypercorn's limit is fixed at start-up, so it cannot show those bugs.

Validation follows the order of pushy's validating mock server (see
``/work/shared/protocols/apns-fcm-and-peers.md`` §7), so a request with several faults
gets the same reason here as there.  A scripted reply (:meth:`ApnsSimulator.script`) is
checked where pushy checks the token's state: after the headers, before authentication
and the payload.

Everything is deliberately lean on the request path: header values stay ``bytes``, a
provider token's signature is verified once per connection, and nothing is logged unless
the caller asked for it.

The package, one module per concern (this module re-exports every public name):

- ``constants``: tunables, and the rules and reasons of APNs the simulator follows;
- ``values``: :class:`SimReply` (a scripted fault) and :class:`Received` (the record);
- ``jwt``: provider tokens, parsed and verified;
- ``connection``: one client connection's h2 state, stream limit and tasks;
- ``answering``: judging a complete request and answering it;
- ``simulator``: :class:`ApnsSimulator`, its settings, scripting and accept loop.
"""

from pushd.simulators.apns.constants import (
    CLOSE_LINGER,
    CONNECTION_WINDOW_SIZE,
    DEFAULT_INITIAL_MAX_STREAMS,
    DEFAULT_MAX_STREAMS,
    HANDSHAKE_TIMEOUT,
    INITIAL_WINDOW_SIZE,
    JWT_CACHE_SIZE,
    JWT_MAX_AGE,
    JWT_MAX_FUTURE,
    JWT_MIN_REFRESH,
    MAX_COLLAPSE_ID,
    MAX_KEPT_BODY,
    MAX_PAYLOAD,
    MAX_VOIP_PAYLOAD,
    REASON_STATUS,
    TOKEN_RE,
    TOPIC_SUFFIXES,
)
from pushd.simulators.apns.simulator import ApnsSimulator
from pushd.simulators.apns.values import Received, SimReply
from pushd.simulators.script import Action

__all__ = [
    "CLOSE_LINGER",
    "CONNECTION_WINDOW_SIZE",
    "DEFAULT_INITIAL_MAX_STREAMS",
    "DEFAULT_MAX_STREAMS",
    "HANDSHAKE_TIMEOUT",
    "INITIAL_WINDOW_SIZE",
    "JWT_CACHE_SIZE",
    "JWT_MAX_AGE",
    "JWT_MAX_FUTURE",
    "JWT_MIN_REFRESH",
    "MAX_COLLAPSE_ID",
    "MAX_KEPT_BODY",
    "MAX_PAYLOAD",
    "MAX_VOIP_PAYLOAD",
    "REASON_STATUS",
    "TOKEN_RE",
    "TOPIC_SUFFIXES",
    "Action",
    "ApnsSimulator",
    "Received",
    "SimReply",
]
