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
    MACHINE,
    MATRIX_FANOUT_DEVICES,
    MIXED_APNS_DEVICES,
    MIXED_FCM_DEVICES,
    PUSHD,
    STEAL,
    ZULIP_DEVICES,
)
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


@attrs.frozen
class Plan:
    """A whole benchmark: unmeasured warm-ups, then the measured scenarios in order."""

    warmups: tuple[Scenario, ...]
    scenarios: tuple[Scenario, ...]


@attrs.frozen
class Row:
    """One measured scenario, in the units the table shows."""

    scenario: Scenario
    requests: int
    per_second: float
    p50_ms: float
    p99_ms: float
    #: pushd CPU-ms per notification (per request for the empty endpoint).
    pushd_cpu_ms: float
    #: The FCM simulator's CPU-ms per FCM send; None when the scenario sends to no FCM device.
    fcm_sim_cpu_ms: float | None
    #: Share of one core each process used during the window.
    cores: dict[str, float]
    peak_rss_mb: float

    @property
    def contended(self) -> bool:
        return self.cores[OTHER] >= CONTENDED_OTHER_SHARE

    @classmethod
    def from_report(cls, scenario: Scenario, report: dict[str, Any], peak_kib: int) -> Row:
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
            pushd_cpu_ms=cpu[PUSHD] * 1000 / units,
            fcm_sim_cpu_ms=cpu[FCM_SIM] * 1000 / fcm_sends if fcm_sends else None,
            cores={role: seconds / elapsed for role, seconds in cpu.items()}
            # clock ticks can make the difference slightly negative
            | {OTHER: max(0.0, cpu[MACHINE] - ours) / elapsed},
            peak_rss_mb=peak_kib / KIB_PER_MB,
        )


#: The processes whose CPU the table shows, in its column order.
PROCESSES = (PUSHD, APNS_SIM, FCM_SIM, DRIVER)
#: Machine CPU used by anything but those processes (kernel softirqs, other tasks).
OTHER = "other"
LABELS = {
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
COLUMN_TITLES = {PUSHD: "pushd", APNS_SIM: "apnsim", FCM_SIM: "fcmsim", DRIVER: "driver"}
HEADER = (
    f"{'scenario':<{LABEL_WIDTH}} {'conc':>4} {'requests':>8} {'notif/s':>8} {'p50 ms':>7}"
    f" {'p99 ms':>7} {'CPU-ms/n':>8}"
    + "".join(f" {COLUMN_TITLES[role]:>6}" for role in PROCESSES)
    + f" {'other':>6} {'steal':>6} {'RSS MB':>7}"
)


def format_row(row: Row) -> str:
    rate = f"{row.per_second:,.0f}" + ("*" if row.scenario.mode == "empty" else "")
    return (
        f"{LABELS[row.scenario.mode]:<{LABEL_WIDTH}} {row.scenario.concurrency:>4}"
        f" {row.requests:>8} {rate:>8} {row.p50_ms:>7.1f} {row.p99_ms:>7.1f}"
        f" {row.pushd_cpu_ms:>8.3f}"
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
