"""The dispatcher's spool side of an answer: what a caller is waiting for, and the rows
written for what is not final when it stops waiting (split from :mod:`pushd.dispatch`).

Before the caller hears ``retrying``, every delivery that is not final is written to
the spool (sealed): still in flight (leased to this instance, so nobody else sends it
meanwhile), or failed transiently (due after a backoff).  A spool at ``max_queued``
refuses instead (``failed``, ``spool_full``).  A retry is counted (``retrying``) once
its row is written; one the store could not write is counted ``failed``
(``store_unavailable``), as its caller hears 503.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import TYPE_CHECKING

import attrs
import trio

from pushd.decisions import Report, Retry
from pushd.metrics.tally import STORE_UNAVAILABLE
from pushd.model import Delivery, Outcome, mask_token
from pushd.store import StoreUnavailable
from pushd.store.spool import SpoolEntry

if TYPE_CHECKING:
    from pushd.dispatch import Dispatcher

log = logging.getLogger("pushd.dispatch")


@attrs.define(eq=False)
class CallerBatch:
    """The results one ``deliver`` call is waiting for."""

    outcomes: list[Outcome | None]
    pending: int
    done: trio.Event = attrs.Factory(trio.Event)
    #: Set when the caller stops waiting; later outcomes settle spool rows instead.
    closed: bool = False
    #: Spool row id per index, once written; outcomes that arrive before that wait here.
    rows: dict[int, int] = attrs.Factory(dict)
    early: dict[int, Outcome] = attrs.Factory(dict)
    spooling: bool = False


async def spool(
    dispatcher: Dispatcher,
    deliveries: Sequence[Delivery],
    batch: CallerBatch,
    spooled: dict[int, Retry],
    reports: list[Report | None],
    now: float,
) -> None:
    """Write the rows of ``spooled`` (refusing what does not fit) and report them."""
    entries: list[SpoolEntry] = []
    indices: list[int] = []
    for index, retry in spooled.items():
        delivery = deliveries[index]
        in_flight = batch.outcomes[index] is None
        if dispatcher.depth.get(delivery.app, 0) >= dispatcher.retry.max_queued:
            reports[index] = refuse_full(dispatcher, delivery, in_flight)
            continue
        dispatcher.depth[delivery.app] = dispatcher.depth.get(delivery.app, 0) + 1
        entries.append(entry(dispatcher, delivery, retry, now, in_flight=in_flight))
        indices.append(index)
        reason = None if in_flight else retry.reason
        reports[index] = Report(delivery, "retrying", reason, batch.outcomes[index])
    batch.spooling = True
    try:
        ids = await dispatcher.store.spool_add(entries)
    except StoreUnavailable:
        for index in indices:
            dispatcher.depth[deliveries[index].app] -= 1
            count_unspooled(dispatcher, deliveries[index])
        batch.spooling = False
        raise
    batch.spooling = False
    for index, row_id in zip(indices, ids, strict=True):
        batch.rows[index] = row_id
        outcome = batch.outcomes[index]
        if outcome is not None:  # one still in flight counts when its outcome arrives
            dispatcher.count_retry(deliveries[index], outcome)
        early = batch.early.pop(index, None)
        if early is not None:
            dispatcher._settle_row(deliveries[index], row_id, 1, early)
        elif batch.outcomes[index] is not None:
            dispatcher.retry_log.decision(deliveries[index], 1, spooled[index], now, row_id)
    dispatcher.worker.wake()


def entry(
    dispatcher: Dispatcher, delivery: Delivery, retry: Retry, now: float, *, in_flight: bool
) -> SpoolEntry:
    key, sealed = dispatcher.keys.seal(delivery.app, delivery.token, delivery.push)
    return SpoolEntry(
        app=delivery.app,
        token=delivery.token,
        protocol=delivery.protocol,
        ref=delivery.ref,
        caller=delivery.caller,
        registered_at=delivery.registered_at,
        key_id=key,
        sealed=sealed,
        attempt=retry.attempts,
        due_at=retry.due,
        expires_at=dispatcher.expires_at(delivery, now),
        created_at=now,
        unknown=retry.unknown,
        last_reason=retry.reason,
        lease_owner=dispatcher.owner if in_flight else None,
        # Still in flight: the lease outlasts the attempt (the config check holds
        # every request_timeout under lease_seconds), as for a claimed row.
        lease_until=now + dispatcher.spool.lease_seconds if in_flight else None,
    )


def count_unspooled(dispatcher: Dispatcher, delivery: Delivery) -> None:
    """Count a delivery whose row the store could not write as failed
    (``store_unavailable``): its caller heard 503 and may send it again, so nothing
    will retry it here, and its late outcome, if any, is not counted."""
    dispatcher.decisions.stats(delivery.app).failed += 1
    if dispatcher.tally is not None:
        dispatcher.tally.outcome(delivery.app, delivery.protocol, "failed", STORE_UNAVAILABLE)


def refuse_full(dispatcher: Dispatcher, delivery: Delivery, in_flight: bool) -> Report:
    dispatcher.decisions.stats(delivery.app).dropped += 1
    if dispatcher.tally is not None:
        dispatcher.tally.outcome(delivery.app, delivery.protocol, "failed", "spool_full")
    dispatcher.ledger.count(delivery.app, "spool_full")
    log.warning(
        "app %s: the spool holds %d deliveries (retry.max_queued); refusing one to %s%s",
        delivery.app,
        dispatcher.retry.max_queued,
        mask_token(delivery.token),
        " (its attempt is still in flight and may yet arrive)" if in_flight else "",
    )
    return Report(delivery, "failed", "spool_full")
