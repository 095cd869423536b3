"""The dispatcher's shared timer: every wait ends at its time (within SLACK), waits
ended early are forgotten, and the heap does not keep them all.  trio's MockClock
(autojump), so no real time passes."""

from __future__ import annotations

import trio
import trio.testing

from pushd import timer
from pushd.timer import Timer


def test_events_are_set_at_their_time_in_order() -> None:
    clock = trio.testing.MockClock(autojump_threshold=0)
    ended: list[tuple[str, float]] = []

    async def main() -> None:
        shared = Timer()
        async with trio.open_nursery() as nursery:
            await nursery.start(shared.run)
            start = trio.current_time()

            async def wait(name: str, after: float) -> None:
                event = trio.Event()
                shared.add(trio.current_time() + after, event)
                await event.wait()
                ended.append((name, trio.current_time() - start))

            nursery.start_soon(wait, "long", 3.0)
            nursery.start_soon(wait, "short", 1.0)  # added later, due sooner
            await trio.sleep(5)
            cancelled = trio.Event()
            entry = shared.add(trio.current_time() + 1.0, cancelled)
            shared.cancel(entry)
            await trio.sleep(2)
            assert not cancelled.is_set()
            assert len(shared) == 0
            nursery.cancel_scope.cancel()

    trio.run(main, clock=clock)
    assert [name for name, _ in ended] == ["short", "long"]
    for (_, at), due in zip(ended, (1.0, 3.0), strict=True):
        assert due <= at <= due + timer.SLACK


def test_waits_ended_early_do_not_pile_up() -> None:
    shared = Timer()
    entries = [shared.add(1000.0 + n, trio.Event()) for n in range(10 * timer.COMPACT_AFTER)]
    for entry in entries:
        shared.cancel(entry)
    assert len(shared) == 0
    assert len(shared._heap) <= 2 * timer.COMPACT_AFTER + 1
