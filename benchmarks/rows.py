"""The benchmark's scenarios and measured rows: what is run, and the table's units.

Split from ``run.py``: the plans there are lists of :class:`Scenario`; each load-driver
report becomes a :class:`Row`, which the report (``report.py``) prints.
"""

from __future__ import annotations

from typing import Any

import attrs
from common import (
    APNS_SIM,
    DRIVER,
    FCM_SIM,
    FLOOR,
    MACHINE,
    MATRIX_FANOUT_DEVICES,
    MIXED_APNS_DEVICES,
    MIXED_FCM_DEVICES,
    PUSHD,
    STEAL,
    ZULIP_DEVICES,
)
from inside import Inside
from load import MODES

#: Other tasks using this much of a core during a window make its numbers suspect: busy
#: neighbours slow pushd down and raise its CPU per request (caches, fewer batched reads).
CONTENDED_OTHER_SHARE = 0.20
KIB_PER_MB = 1024


@attrs.frozen
class Scenario:
    """One load-driver run: a mode (see ``load.MODES``) at one concurrency."""

    mode: str
    concurrency: int
    requests: int
    warmup: int
    max_seconds: float
    #: Open loop: requests per second offered, evenly spaced (None: closed loop), and
    #: the share of the closed-loop capacity that rate is.
    rate: float | None = None
    load_fraction: float | None = None

    @property
    def server(self) -> str:
        """The process this scenario loads: pushd, or the floor (mode ``floor``)."""
        return FLOOR if self.mode == FLOOR else PUSHD


@attrs.frozen
class Plan:
    """A whole benchmark: unmeasured warm-ups, then the measured scenarios in order."""

    warmups: tuple[Scenario, ...]
    scenarios: tuple[Scenario, ...]
    #: Requests of each floor row (one per concurrency the scenarios use, before and
    #: after every round).  The floor costs about 0.03 CPU-ms a request and the kernel
    #: counts CPU in 10 ms ticks: 30,000 requests give it about 100 ticks (1 %
    #: resolution) in a window of 1-2 s, set by the driver, which saturates first.
    floor_requests: int = 30000
    #: After each closed-loop scenario, open-loop runs at these shares of the capacity it
    #: measured (``--plan latency``), each about ``open_seconds`` long; the native 1-device
    #: rows' rates are also offered to the floor.
    load_fractions: tuple[float, ...] = ()
    open_seconds: float = 8.0

    def open_loop(self, scenario: Scenario, capacity: float) -> list[Scenario]:
        """The open-loop runs that follow ``scenario``, which served ``capacity`` requests/s."""
        out = []
        for fraction in self.load_fractions:
            rate = capacity * fraction
            modes = (scenario.mode, FLOOR) if scenario.mode == "one" else (scenario.mode,)
            out += [
                Scenario(
                    mode,
                    scenario.concurrency,
                    round(rate * self.open_seconds),
                    scenario.warmup,
                    scenario.max_seconds,
                    rate=rate,
                    load_fraction=fraction,
                )
                for mode in modes
            ]
        return out

    def floor_scenarios(self) -> tuple[Scenario, ...]:
        """The floor at each concurrency the scenarios use, most concurrent first."""
        levels = sorted({s.concurrency for s in self.scenarios}, reverse=True)
        warmup = min(s.warmup for s in self.scenarios)
        timeout = max(s.max_seconds for s in self.scenarios)
        return tuple(Scenario(FLOOR, c, self.floor_requests, warmup, timeout) for c in levels)


@attrs.frozen
class OpenLoop:
    """What an open-loop row adds: the rate offered and achieved, the tail, late starts."""

    rate: float
    achieved_rate: float
    #: Requests that left more than ``load.LATE_SECONDS`` after their due time.
    late: int
    worst_late_ms: float
    p90_ms: float
    p999_ms: float
    max_ms: float

    @classmethod
    def from_report(cls, report: dict[str, Any]) -> OpenLoop | None:
        if report.get("rate") is None:
            return None
        return cls(**{field.name: report[field.name] for field in attrs.fields(cls)})


@attrs.frozen
class Row:
    """One measured scenario, in the units the table shows."""

    scenario: Scenario
    requests: int
    per_second: float
    p50_ms: float
    p99_ms: float
    #: pushd CPU-ms per notification (per request for the empty endpoint); in a floor
    #: row, the floor's CPU-ms per request.
    pushd_cpu_ms: float
    #: The FCM simulator's CPU-ms per FCM send; None when the scenario sends to no FCM device.
    fcm_sim_cpu_ms: float | None
    #: Share of one core each process used during the window.
    cores: dict[str, float]
    peak_rss_mb: float
    #: CPU seconds the rest of the machine used in the window (``/proc/stat``'s busy
    #: total less the measured processes): other tasks, other agents, the kernel.
    other_seconds: float = 0.0
    #: Where the load driver ran (its pid, CPUs and nice value: a new one per row).
    driver: str = ""
    #: Which round of the run (``run.py --rounds``) this row belongs to, from 1.
    round: int = 1
    #: The floor's CPU-ms per request at this concurrency in this round (the mean of
    #: the floor rows before and after it); None until the round's floor is measured.
    floor_cpu_ms: float | None = None
    open_loop: OpenLoop | None = None
    #: Share of the window each watched process was runnable but waiting for a CPU.
    run_queue: dict[str, float] = attrs.Factory(dict)
    #: The window's latency as pushd recorded it (handlers, upstream); None for the floor.
    inside: Inside | None = None

    @property
    def contended(self) -> bool:
        return self.cores[OTHER] >= CONTENDED_OTHER_SHARE

    @property
    def floor_ratio(self) -> float | None:
        """CPU-ms per notification over the floor's CPU-ms per request, same concurrency.

        The figure to compare across runs on a noisy machine: neighbours slow pushd and
        the floor alike, so the ratio drifts far less than either.
        """
        if self.floor_cpu_ms is None or self.floor_cpu_ms <= 0:
            return None
        return self.pushd_cpu_ms / self.floor_cpu_ms

    def evolve_floor(self, floor_cpu_ms: float) -> Row:
        return attrs.evolve(self, floor_cpu_ms=floor_cpu_ms)

    @classmethod
    def from_report(
        cls, scenario: Scenario, report: dict[str, Any], peak_kib: int, round: int = 1
    ) -> Row:
        units = report["notifications"] or report["requests"]
        fcm_sends = report["fcm_notifications"]
        cpu = report["cpu_seconds"]
        elapsed = report["elapsed"]
        ours = sum(cpu[role] for role in PROCESSES)
        return cls(
            scenario=scenario,
            requests=report["requests"],
            per_second=units / elapsed,
            p50_ms=report["p50_ms"],
            p99_ms=report["p99_ms"],
            pushd_cpu_ms=cpu[scenario.server] * 1000 / units,
            fcm_sim_cpu_ms=cpu[FCM_SIM] * 1000 / fcm_sends if fcm_sends else None,
            cores={role: seconds / elapsed for role, seconds in cpu.items()}
            # clock ticks can make the difference slightly negative
            | {OTHER: max(0.0, cpu[MACHINE] - ours) / elapsed},
            peak_rss_mb=peak_kib / KIB_PER_MB,
            other_seconds=max(0.0, cpu[MACHINE] - ours),
            driver=report["driver"],
            round=round,
            open_loop=OpenLoop.from_report(report),
            run_queue={
                role: seconds / elapsed
                for role, seconds in report.get("run_queue_seconds", {}).items()
            },
        )


#: The processes whose CPU the table shows, in its column order.
PROCESSES = (PUSHD, FLOOR, APNS_SIM, FCM_SIM, DRIVER)
#: Machine CPU used by anything but those processes (kernel softirqs, other tasks).
OTHER = "other"
LABELS = {
    FLOOR: "floor (trio, fixed answer)",
    "empty": "empty endpoint",
    "one": "APNs 1 device/request",
    "hundred": "APNs 100 devices/req",
    "fcm-one": "FCM 1 device/request",
    "fcm-hundred": "FCM 100 devices/req",
    "mixed": f"mixed {MIXED_APNS_DEVICES} APNs+{MIXED_FCM_DEVICES} FCM",
    "zulip": f"Zulip notify, {ZULIP_DEVICES} devices",
    "mattermost": "Mattermost send_push, 1 device",
    "matrix": "Matrix notify, 1 device",
    "matrix-4": f"Matrix notify, {MATRIX_FANOUT_DEVICES} devices",
}
LABEL_WIDTH = max(len(label) for label in LABELS.values())
COLUMN_TITLES = {
    PUSHD: "pushd",
    FLOOR: "floor",
    APNS_SIM: "apnsim",
    FCM_SIM: "fcmsim",
    DRIVER: "driver",
}
HEADER = (
    f"{'scenario':<{LABEL_WIDTH}} {'conc':>4} {'requests':>8} {'notif/s':>8} {'p50 ms':>7}"
    f" {'p99 ms':>7} {'CPU-ms/n':>8} {'xfloor':>6}"
    + "".join(f" {COLUMN_TITLES[role]:>6}" for role in PROCESSES)
    + f" {'other':>6} {'steal':>6} {'RSS MB':>7}"
)


def format_ratio(ratio: float | None) -> str:
    return "-" if ratio is None else f"{ratio:.2f}"


def format_row(row: Row) -> str:
    per_request = MODES[row.scenario.mode].devices == 0
    rate = f"{row.per_second:,.0f}" + ("*" if per_request else "")
    ratio = None if row.scenario.server == FLOOR else row.floor_ratio
    return (
        f"{LABELS[row.scenario.mode]:<{LABEL_WIDTH}} {row.scenario.concurrency:>4}"
        f" {row.requests:>8} {rate:>8} {row.p50_ms:>7.1f} {row.p99_ms:>7.1f}"
        f" {row.pushd_cpu_ms:>8.3f} {format_ratio(ratio):>6}"
        + "".join(f" {row.cores[role]:>6.0%}" for role in PROCESSES)
        + f" {row.cores[OTHER]:>6.0%} {row.cores[STEAL]:>6.0%}"
        f" {row.peak_rss_mb:>7.1f}" + ("  !" if row.contended else "")
    )


def verdict(ok: bool) -> str:
    return "MET" if ok else "NOT MET"


def sends_no_fcm(row: Row) -> bool:
    return row.fcm_sim_cpu_ms is None


def not_matrix(row: Row) -> bool:
    return not MODES[row.scenario.mode].matrix
