"""How the collector treats pushd's heap once it serves: start-up frozen, fewer pauses.

Measured under load (``benchmarks/run.py --plan onedev`` with ``PUSHD_BENCH_GC_LOG``):
with Python's defaults, a full (generation 2) collection came every 3 to 5 seconds and
paused the process 25 to 110 ms each time, walking every object start-up made (modules,
the config, TLS and HTTP/2 machinery), none of which is ever garbage.  Every request in
flight waited for it: that alone put the p99 of 64 concurrent one-device requests near
100 ms.  Young collections came several times a second (0.3 ms each).

:func:`settle`, once per process when the first HTTP server listens: one full
collection (so no garbage is kept forever), then ``gc.freeze()`` moves every object
that survived start-up to the permanent generation, which collections never walk; and
the young generation's threshold is raised to :data:`GEN0_THRESHOLD` allocations, so
young collections come less often (most of a request's objects die by reference count
before one anyway).  Cyclic garbage made while serving is still collected.
"""

from __future__ import annotations

import gc
from typing import Final

#: Container allocations (net of deallocations) between young collections, Python's
#: default being 700.  A one-device push allocates a few hundred.
GEN0_THRESHOLD: Final = 10_000

_settled = False


def settle() -> None:
    """Freeze the start-up heap and raise the young threshold; once per process."""
    global _settled
    if _settled:
        return
    _settled = True
    gc.collect()
    gc.freeze()
    _, gen1, gen2 = gc.get_threshold()
    gc.set_threshold(GEN0_THRESHOLD, gen1, gen2)
