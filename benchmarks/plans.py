"""The benchmark's plans: which scenarios ``run.py --plan NAME`` runs, in which order.

Split from ``run.py``.  A plan is a list of closed-loop :class:`rows.Scenario` runs (the
floor is added before and after every round); ``--plan latency`` also follows each of
its scenarios with open-loop runs at fixed shares of the capacity it measured.
"""

from __future__ import annotations

from rows import Plan, Scenario

#: Baselines run next to the sends of the same concurrency, so the machine's state is alike;
#: so do the Mattermost sends, which are compared with both (one APNs device a request).
#: FCM costs about 50 times more CPU per notification than APNs, in pushd (httpx) and in
#: the simulator (hypercorn) alike, so its runs send far fewer notifications: a few
#: thousand each, enough for a steady window of several seconds.  Every FCM scenario has
#: at most 400 sends in flight (4 x 100), so pushd's two httpx connections (200 streams)
#: are busy and no send waits anywhere near pushd's 10 s first-attempt deadline.
#: The Matrix runs come last, as one block: RSS is a high-water mark, and theirs rises
#: far more than the other rows' (the 256-concurrency runs: 256 connections and up to
#: 1,024 deliveries in flight, about 20-25 MB that pushd's allocator keeps; and the
#: dedupe of every event sent within ``[matrix] dedupe_seconds``, about 5-7 MB after
#: 60,000), so any row after them would show that memory too.  Their requests give
#: windows of several seconds at
#: about 800 (1 device) and 1,800 (4 devices) notifications/s; at 256 there are more, so
#: that connection set-up and the last requests' drain weigh less on the window.
MATRIX_REQUESTS = 6000
MATRIX_4_REQUESTS = 3000
MATRIX_256_REQUESTS = 10000
MATRIX_4_256_REQUESTS = 5000
FULL = Plan(
    warmups=(Scenario("one", 16, 2000, 5, 15.0), Scenario("fcm-one", 16, 300, 5, 15.0)),
    scenarios=(
        Scenario("empty", 16, 12000, 5, 20.0),
        Scenario("one", 16, 9000, 5, 20.0),
        Scenario("mattermost", 16, 9000, 5, 20.0),
        Scenario("empty", 64, 12000, 5, 20.0),
        Scenario("one", 64, 9000, 5, 20.0),
        Scenario("mattermost", 64, 9000, 5, 20.0),
        Scenario("hundred", 4, 300, 2, 20.0),
        Scenario("hundred", 16, 300, 2, 20.0),
        Scenario("fcm-one", 16, 3000, 5, 20.0),
        Scenario("fcm-hundred", 4, 50, 1, 20.0),
        Scenario("mixed", 4, 100, 1, 20.0),
        Scenario("zulip", 4, 2000, 2, 20.0),
        Scenario("zulip", 16, 2000, 2, 20.0),
        Scenario("matrix", 16, MATRIX_REQUESTS, 5, 20.0),
        Scenario("matrix-4", 16, MATRIX_4_REQUESTS, 5, 20.0),
        Scenario("matrix", 64, MATRIX_REQUESTS, 5, 20.0),
        Scenario("matrix-4", 64, MATRIX_4_REQUESTS, 5, 20.0),
        Scenario("matrix", 256, MATRIX_256_REQUESTS, 3, 20.0),
        Scenario("matrix-4", 256, MATRIX_4_256_REQUESTS, 3, 20.0),
    ),
)
#: The rows issue 15 sets targets for (``--plan serving``): the serving layer alone,
#: one device a request (native and Matrix, at 64 concurrent, where the p99 target is),
#: and 100 devices a request to each upstream.  Short enough (about a minute a round on
#: this machine) to repeat with ``--rounds 3`` and quote medians with their ranges.
SERVING = Plan(
    warmups=(Scenario("one", 16, 2000, 5, 15.0), Scenario("fcm-one", 16, 300, 5, 15.0)),
    scenarios=(
        Scenario("empty", 64, 12000, 5, 20.0),
        Scenario("one", 64, 9000, 5, 20.0),
        Scenario("mattermost", 64, 9000, 5, 20.0),
        Scenario("matrix", 64, MATRIX_REQUESTS, 5, 20.0),
        Scenario("hundred", 16, 300, 2, 20.0),
        Scenario("fcm-hundred", 4, 50, 1, 20.0),
    ),
)
#: The one-device rows alone (``--plan onedev``): issue 15's 0.30 CPU-ms and p99 targets
#: for native, Mattermost and Matrix at 64 concurrent, with the empty endpoint beside
#: them, for work on the serving path (about 40 s a round).
ONEDEV = Plan(
    warmups=(Scenario("one", 16, 2000, 5, 15.0),),
    scenarios=(
        Scenario("empty", 64, 12000, 5, 20.0),
        Scenario("one", 64, 9000, 5, 20.0),
        Scenario("mattermost", 64, 9000, 5, 20.0),
        Scenario("matrix", 64, MATRIX_REQUESTS, 5, 20.0),
    ),
)
#: Matrix notifies with 1 and 4 devices a request (``--plan batched``): the per-device
#: cost beside the per-request one, for work on what each further device costs.
BATCHED = Plan(
    warmups=(Scenario("one", 16, 2000, 5, 15.0),),
    scenarios=(
        Scenario("matrix", 64, MATRIX_REQUESTS, 5, 20.0),
        Scenario("matrix-4", 64, MATRIX_4_REQUESTS, 5, 20.0),
    ),
)
#: Matrix notifies with one device a request alone, in long windows (``--plan matrix``):
#: the row issue 15 compares with Sygnal, long enough for a sampling profiler
#: (``py-spy record --pid``) attached to pushd to see nothing else.
MATRIX_LONG_REQUESTS = 60000
MATRIX = Plan(
    warmups=(Scenario("matrix", 16, 2000, 5, 15.0),),
    scenarios=(Scenario("matrix", 64, MATRIX_LONG_REQUESTS, 5, 30.0),),
)
#: The same with 4 devices a request (``--plan matrix4``): what each further device
#: costs, for a profiler (Sygnal's batched row).
MATRIX4_LONG_REQUESTS = 80000
MATRIX4 = Plan(
    warmups=(Scenario("matrix-4", 16, 1000, 5, 15.0),),
    scenarios=(Scenario("matrix-4", 64, MATRIX4_LONG_REQUESTS, 5, 30.0),),
)
#: The empty endpoint alone in a long window (``--plan empty``): the serving layer with
#: no handler work, for a profiler, and its floor beside it.
EMPTY_LONG_REQUESTS = 150000
EMPTY = Plan(
    warmups=(Scenario("empty", 16, 2000, 5, 15.0),),
    scenarios=(Scenario("empty", 64, EMPTY_LONG_REQUESTS, 5, 30.0),),
)
#: One FCM device a request (``--plan fcmone``), at 16 and 64 concurrent: the path of
#: an Android user's push, whose concurrent requests leave in one upstream batch.  The
#: FCM simulator takes about as much CPU as pushd (its own figure is not pushd's).
FCMONE = Plan(
    warmups=(Scenario("fcm-one", 16, 300, 5, 15.0),),
    scenarios=(
        Scenario("fcm-one", 16, 3000, 5, 20.0),
        Scenario("fcm-one", 64, 6000, 5, 20.0),
    ),
)
#: Windows well under a second: proves the benchmark works, the numbers mean little.
QUICK = Plan(
    warmups=(Scenario("one", 4, 100, 2, 5.0), Scenario("fcm-one", 4, 20, 2, 5.0)),
    scenarios=(
        Scenario("empty", 16, 500, 2, 5.0),
        Scenario("one", 16, 500, 2, 5.0),
        Scenario("mattermost", 16, 500, 2, 5.0),
        Scenario("hundred", 4, 20, 1, 5.0),
        Scenario("fcm-one", 16, 100, 1, 5.0),
        Scenario("fcm-hundred", 2, 4, 1, 5.0),
        Scenario("mixed", 2, 4, 1, 5.0),
        Scenario("zulip", 4, 40, 1, 5.0),
        Scenario("matrix", 16, 500, 2, 5.0),
    ),
    floor_requests=3000,
)
#: The fan-out rows alone (``--plan fanout``): 100 devices a request to each upstream,
#: with more FCM requests than the full run, for work on the upstream clients.
FANOUT = Plan(
    warmups=(Scenario("hundred", 4, 20, 1, 15.0), Scenario("fcm-hundred", 4, 20, 1, 15.0)),
    scenarios=(
        Scenario("hundred", 16, 300, 2, 20.0),
        Scenario("fcm-hundred", 4, 100, 1, 20.0),
    ),
)
#: 100 APNs devices a request alone in a long window (``--plan hundred``): what each
#: device of a fan-out costs, for a profiler attached to pushd (issue 15's 0.07 CPU-ms).
HUNDRED_LONG_REQUESTS = 3000
HUNDRED = Plan(
    warmups=(Scenario("hundred", 4, 20, 1, 15.0),),
    scenarios=(Scenario("hundred", 16, HUNDRED_LONG_REQUESTS, 2, 60.0),),
)

#: Issue 15's p99 target, measured as a gateway's latency should be (``--plan latency``):
#: the 1-device rows at 64 connections, each first closed-loop (its capacity, as the
#: other plans measure it), then open-loop at a quarter, half and three quarters of that
#: capacity, with the floor offered the native row's rates.  At saturation a closed
#: loop's latency is the queue the driver builds itself (mean = 64 / rate); below it,
#: the open loop's tail is what a request meets.  About two minutes a round.
LOAD_FRACTIONS = (0.25, 0.50, 0.75)
LATENCY = Plan(
    warmups=(Scenario("one", 16, 2000, 5, 15.0),),
    scenarios=(
        Scenario("one", 64, 9000, 5, 20.0),
        Scenario("mattermost", 64, 9000, 5, 20.0),
        Scenario("matrix", 64, MATRIX_REQUESTS, 5, 20.0),
    ),
    load_fractions=LOAD_FRACTIONS,
)
PLANS = {
    "full": FULL,
    "serving": SERVING,
    "onedev": ONEDEV,
    "fanout": FANOUT,
    "hundred": HUNDRED,
    "batched": BATCHED,
    "matrix": MATRIX,
    "matrix4": MATRIX4,
    "empty": EMPTY,
    "fcmone": FCMONE,
    "latency": LATENCY,
    "quick": QUICK,
}
