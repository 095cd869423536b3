"""An FCM HTTP v1 look-alike: Google's OAuth token endpoint and the send endpoint.

Like :mod:`pushd.simulators.apns` it serves pushd's tests (faults on demand, a record of
what arrived), benchmarks and ``pushd simulate``.  One server answers both endpoints:

- ``POST /token``: the OAuth 2 JWT-bearer grant a service account uses.  The RS256
  assertion is verified against the accounts registered with
  :meth:`FcmSimulator.add_account`, with the claim rules Google applies (``iss``,
  ``scope``, ``aud``, a lifetime of at most an hour), and a random access token comes
  back.  Tokens expire (:attr:`FcmSimulator.token_lifetime`, :meth:`expire_tokens`), so a
  client's refresh logic and its handling of 401 can be tested.
- ``POST /v1/projects/{project_id}/messages:send``: checks the bearer token, the project,
  a per-project quota, then the message the way FCM does (one target, ``data`` a map of
  strings, no reserved keys, a well-formed ``android.ttl`` and ``priority``, the size
  limit, a plausible registration token), and answers with ``{"name": ...}`` or Google's
  error body (``google.rpc.Status`` with ``FcmError``/``BadRequest``/... details).

Facts come from ``/work/shared/protocols/apns-fcm-and-peers.md`` §2 and §7; where Google
documents nothing (the text of some messages), the simulator picks something plausible
and clients must not depend on it beyond status, ``status`` and ``errorCode``.

Two loops serve connections.  HTTP/2 over TLS (ALPN ``h2``, how pushd and every FCM
client talk) has the simulator's own loop (``h2server``), built like the APNs simulator's:
a reader task feeds the ``h2`` state machine and answers complete requests on the spot,
a writer task sends whatever is queued once per wake-up, so answers ready together leave
in one write, as Google's front end sends them.  hypercorn answered each response with
separate HEADERS and DATA writes, one response at a time, at more CPU per send than the
gateway under test spent, which made the simulator the bottleneck of the FCM fan-out
benchmark.  HTTP/1.1 (and clear-text h2c, ``ssl_context=None``) stays on hypercorn: its
defaults suit a web app, not an upstream, so :func:`hypercorn_config` raises the idle
timeout and the per-connection request cap.  Either way the accept loop is ours, so a
scripted ``"drop"`` can reset the very connection a request arrived on and ``"goaway"``
can send that connection a GOAWAY (through hypercorn's own h2 state for h2c, the one
place this package reaches past hypercorn's public API).

The package, one module per concern (this module re-exports every public name):

- ``constants``: tunables, and the rules, error codes and texts of FCM and Google;
- ``values``: :class:`FcmReply` (a scripted fault) and :class:`FcmReceived` (the record);
- ``oauth``: service accounts and their assertions;
- ``validation``: a send body checked as FCM does (pure);
- ``answers``: answers decided, and Google's error bodies;
- ``transport``: ALPN, hypercorn's settings and the connections hypercorn serves;
- ``h2server``: the HTTP/2 loop for connections that chose ``h2``;
- ``endpoints``: the token endpoint and the send endpoint, with the per-project quota;
- ``simulator``: :class:`FcmSimulator`, its settings, scripting, accept loop, what a
  request on either loop leads to, and the ASGI app.
"""

from pushd.simulators.fcm.answers import google_error_body
from pushd.simulators.fcm.constants import (
    ASSERTION_CLOCK_SKEW,
    ASSERTION_MAX_LIFETIME,
    BAD_REQUEST_TYPE,
    CLOSE_LINGER,
    DEFAULT_TOKEN_LIFETIME,
    ERROR_INFO_TYPE,
    FCM_ERROR_CODES,
    FCM_ERROR_TYPE,
    GRANT_SWEEP_THRESHOLD,
    HANDSHAKE_TIMEOUT,
    JWT_BEARER_GRANT,
    KEEP_ALIVE_MAX_REQUESTS,
    KEEP_ALIVE_TIMEOUT,
    MAX_CONCURRENT_STREAMS,
    MAX_PAYLOAD,
    MAX_REQUEST_BODY,
    MAX_TOPIC_PAYLOAD,
    MAX_TTL_SECONDS,
    QUOTA_FAILURE_TYPE,
    REGISTRATION_TOKEN_RE,
    RESERVED_DATA_KEYS,
    RESERVED_DATA_PREFIXES,
    SERVICE_ACCOUNT_KEY_BITS,
    TOKEN_PATH,
    TOPIC_RE,
    TTL_RE,
)
from pushd.simulators.fcm.oauth import make_service_account
from pushd.simulators.fcm.simulator import FcmSimulator, Receive, Scope, Send
from pushd.simulators.fcm.transport import configure_alpn, hypercorn_config, log
from pushd.simulators.fcm.validation import payload_size
from pushd.simulators.fcm.values import FcmReceived, FcmReply
from pushd.simulators.script import Action

__all__ = [
    "ASSERTION_CLOCK_SKEW",
    "ASSERTION_MAX_LIFETIME",
    "BAD_REQUEST_TYPE",
    "CLOSE_LINGER",
    "DEFAULT_TOKEN_LIFETIME",
    "ERROR_INFO_TYPE",
    "FCM_ERROR_CODES",
    "FCM_ERROR_TYPE",
    "GRANT_SWEEP_THRESHOLD",
    "HANDSHAKE_TIMEOUT",
    "JWT_BEARER_GRANT",
    "KEEP_ALIVE_MAX_REQUESTS",
    "KEEP_ALIVE_TIMEOUT",
    "MAX_CONCURRENT_STREAMS",
    "MAX_PAYLOAD",
    "MAX_REQUEST_BODY",
    "MAX_TOPIC_PAYLOAD",
    "MAX_TTL_SECONDS",
    "QUOTA_FAILURE_TYPE",
    "REGISTRATION_TOKEN_RE",
    "RESERVED_DATA_KEYS",
    "RESERVED_DATA_PREFIXES",
    "SERVICE_ACCOUNT_KEY_BITS",
    "TOKEN_PATH",
    "TOPIC_RE",
    "TTL_RE",
    "Action",
    "FcmReceived",
    "FcmReply",
    "FcmSimulator",
    "Receive",
    "Scope",
    "Send",
    "configure_alpn",
    "google_error_body",
    "hypercorn_config",
    "log",
    "make_service_account",
    "payload_size",
]
