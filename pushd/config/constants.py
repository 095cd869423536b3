"""pushd.toml's defaults, limits and the literal types of its values."""

from __future__ import annotations

from typing import Literal

DEFAULT_PORT = 8080
#: PostgreSQL connections per instance: a request needs one for a few milliseconds.
DEFAULT_POOL_SIZE = 10
#: A claimed spool row is another instance's to take after this long: longer than any
#: attempt (request_timeout), short enough that a dead instance's rows move on soon.
DEFAULT_LEASE_SECONDS = 60.0
#: How much longer than an app's request_timeout a lease must be: the time from a claim
#: to the send (milliseconds), and clocks of instances on one PostgreSQL that disagree a
#: little (NTP keeps them within milliseconds).
LEASE_MARGIN = 1.0
#: ``[[apps]] connections``: each carries up to 1000 APNs streams; hundreds only cost
#: memory and start-up time (100,000 took 6 s and 320 MB, and most never connected).
MAX_CONNECTIONS = 100
#: A backlog older than this is an outage worth an alert, not a blip.
DEFAULT_DEGRADED_AFTER = 600.0
DEFAULT_MAX_BODY_BYTES = 64 * 1024
DEFAULT_FIRST_ATTEMPT_DEADLINE = 10.0
DEFAULT_DRAIN_SECONDS = 10.0
#: Shutdown, past the drain deadline: how long requests whose callers were waiting get
#: to spool what is not final and answer (a store write, milliseconds when healthy)...
ANSWER_SECONDS = 3.0
#: ...and then how long writing the last outcomes and giving back leases may take.
FLUSH_SECONDS = 3.0
#: What a stop takes beyond ``drain_seconds``: the two above, and closing the store.
SHUTDOWN_MARGIN = ANSWER_SECONDS + FLUSH_SECONDS + 1.0
#: ``TimeoutStopSec`` of systemd/pushd.service: SIGKILL after this long.
UNIT_STOP_TIMEOUT = 30.0
#: ``[server] workers``: more than the machine's cores only adds switching.
MAX_WORKERS = 64
#: Apple's key and team identifiers are ten characters.
APPLE_ID_LENGTH = 10
#: FCM's longest ``android.ttl``: 28 days.
FCM_MAX_TTL = 28 * 24 * 3600
#: httpx carries at most 100 streams per connection: two give FCM room for a fan-out.
FCM_MIN_CONNECTIONS = 2

LogLevel = Literal["debug", "info", "warning", "error"]
#: ``[store] synchronous`` (SQLite's PRAGMA of that name, the two safe values in WAL mode).
SqliteSync = Literal["full", "normal"]
#: What of a message an app's pushes carry (see :class:`AppConfig`).
ContentMode = Literal["full", "redacted", "id_only"]

#: Zulip's own bouncer allows each server 1000 requests a minute (``api_by_remote_server``).
DEFAULT_ZULIP_RATE_LIMIT = 1000
#: A secret URL prefix stands in for a password: refuse short ones.
MIN_PATH_SECRET = 16
#: Mattermost's proxy default (`ThrottlePerSec`).
DEFAULT_MATTERMOST_THROTTLE = 300
#: Requests a minute per chat server (native API, Rocket.Chat) or per source address
#: (Matrix): Mattermost's 300 a second, counted over a minute, so a burst (an @all in
#: a room of thousands: a request per user, device or pusher within seconds) passes,
#: while a loop sending as fast as pushd answers is refused within seconds.
DEFAULT_RATE_LIMIT = 18_000
#: Shortest admin token accepted: it guards /healthz's detail like a password.
MIN_ADMIN_TOKEN = 16
#: Synapse waits 60 s for a gateway and sends one pusher's pushes one after another:
#: answer well before, and retry the rest in the background.
DEFAULT_MATRIX_ANSWER_WITHIN = 3.0
#: Synapse retries a failed push after 1 s, doubling: ten minutes covers a burst of
#: its retries after a lost answer.
DEFAULT_MATRIX_DEDUPE_SECONDS = 600.0
#: The client-server API caps ``app_id`` at 64 characters.
MATRIX_APP_ID_MAX = 64
#: Zulip's ``kind`` of a legacy device token: 1 is APNs, 2 is FCM (``PushDeviceToken``).
ZULIP_KIND_APNS = 1
ZULIP_KIND_FCM = 2
#: ``fcm_options`` members pushd sets itself or that would retarget the message.
FCM_OPTIONS_RESERVED = ("token", "topic", "condition", "data")
#: What a push says instead of the message in the ``redacted`` and ``id_only`` modes.
DEFAULT_REDACTED_TEXT = "New message"
#: Longest ``redacted_text``: it replaces a message on a lock screen, not a paragraph.
MAX_REDACTED_TEXT = 200
#: The Prometheus port pushd listens on by default (the OpenTelemetry/Prometheus
#: exporter port, free of pushd's API port).
DEFAULT_METRICS_PORT = 9464
