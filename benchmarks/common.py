"""What the benchmark's processes share: identities, the ready handshake, /proc readings.

The benchmark runs pushd, the APNs simulator, the FCM simulator and the load driver as
separate processes so that each one's CPU can be read from the kernel on its own.  Each
child announces that it is ready with one line on stdout (``READY <value>``); :mod:`run`
waits for that line.

CPU time and memory come from ``/proc`` rather than ``psutil``: pushd takes no extra
dependency for its benchmark, and the two fields needed are easy to parse.
"""

from __future__ import annotations

import base64
import os
import socket
import uuid

import attrs
import trio

#: Names the launcher, the simulators and the store agree on.
APP_NAME = "bench-ios"
TOPIC = "org.example.pushd.bench"
KEY_ID = "BENCHKEY01"
TEAM_ID = "BENCHTEAM1"
SERVER_NAME = "bench"
#: The FCM app: its name in pushd.toml and the service account the FCM simulator trusts.
FCM_APP_NAME = "bench-android"
FCM_PROJECT = "pushd-bench"
FCM_CLIENT_EMAIL = f"pushd-bench@{FCM_PROJECT}.iam.gserviceaccount.com"

#: Roles of the processes whose CPU the driver reads (``--watch ROLE=PID``) and the
#: table shows; the driver adds itself as ``driver``.
PUSHD = "pushd"
APNS_SIM = "apns_sim"
FCM_SIM = "fcm_sim"
DRIVER = "driver"
#: The floor server (``floor.py``), measured like pushd in the same invocation.
FLOOR = "floor"

#: Route of the do-nothing endpoint that gives the serving layer's own cost.
EMPTY_PATH = "/bench/empty"
SEND_PATH = "/v1/notifications"

#: First line a child prints once it serves; the rest of the line is its address.
READY_PREFIX = "READY "
#: The APNs simulator's last log line starts with this, then its answers by status as a
#: JSON object (``{"200": 123456}``): the runner checks it against the drivers' counts.
ANSWERS_PREFIX = "simulator: answers by status "

#: Users the store holds for each fan-out, named ``<prefix><n>``.
SINGLE_USER_PREFIX = "one-"
FANOUT_USER_PREFIX = "hundred-"
FANOUT_DEVICES = 100
#: The same for FCM devices, and for users with half APNs, half FCM devices.
FCM_SINGLE_USER_PREFIX = "fcm-one-"
FCM_FANOUT_USER_PREFIX = "fcm-hundred-"
MIXED_USER_PREFIX = "mixed-"
MIXED_FCM_DEVICES = FANOUT_DEVICES // 2
MIXED_APNS_DEVICES = FANOUT_DEVICES - MIXED_FCM_DEVICES

#: The Zulip server the store holds (pushd's Zulip bouncer, ``/api/v1/remotes/``): its
#: uuid and key are what ``manage.py register_server`` would have sent; the key is a
#: fixed benchmark value (64 hex digits, like ``secrets.token_hex(32)``) because the
#: store only keeps its hash and the driver has to authenticate with it.
ZULIP_SERVER_UUID = "6cde5f7a-1f7e-4978-9716-49f69ebfc9fe"
ZULIP_SERVER_KEY = "b3e1" * 16
ZULIP_HOSTNAME = "zulip.bench.example.com"
ZULIP_REALM_UUID = "a9a0d2b8-0f9c-4d52-9d8f-2c4e1d3c5b71"
ZULIP_NOTIFY_PATH = "/api/v1/remotes/push/notify"
#: Label of the Zulip users in :meth:`populate.Population.users` (they have no names:
#: Zulip identifies them by number and uuid, see :func:`zulip_user_uuid`).
ZULIP_USER_PREFIX = "zulip-"
ZULIP_DEVICES = 10
#: Zulip's token kind for APNs (``RemotePushDeviceToken.APNS``).
ZULIP_KIND_APNS = 1
#: Zulip tokens are numbered from here, far above the native API's, so that no token is
#: in both tables (a dead token leaves every table; the benchmark has none, but a token
#: shared between the two would make the APNs simulator's counts ambiguous).
_ZULIP_TOKEN_BASE = 1 << 48

#: The Mattermost server of pushd's Mattermost push proxy (``[[mattermost.servers]]``).
#: Mattermost sends no credentials: its "Push Notification Server" setting is
#: ``http://<pushd>/<path secret>`` and the secret in every request's path is all that
#: identifies it.  A fixed benchmark value (16+ letters, digits, ``-`` or ``_``).
MATTERMOST_SERVER_NAME = "bench-mattermost"
MATTERMOST_PATH_SECRET = "bench-mm-7Qx2Lp9Vd4Kz8Rw3"
MATTERMOST_SEND_PATH = f"/{MATTERMOST_PATH_SECRET}/api/v1/send_push"
#: The platform type the APNs app serves for Mattermost (its ``mattermost_type``), and
#: the ``platform`` a current Mattermost mobile app's iOS session carries.
MATTERMOST_APPLE_TYPE = "apple_rn"
MATTERMOST_APPLE_PLATFORM = f"{MATTERMOST_APPLE_TYPE}-v2"
#: Distinct device tokens the Mattermost run cycles through.  pushd stores none: a
#: Mattermost push carries its token, so the store is not populated for it.
MATTERMOST_DEVICES = 4096
#: Mattermost tokens are numbered from here, far above the native and Zulip ones.
_MATTERMOST_TOKEN_BASE = 1 << 52

#: The Matrix push gateway API's one path (fixed by the spec), and the Matrix app id the
#: benchmark's APNs app serves (``[apps.matrix] app_ids``): Element iOS's, whose pushers
#: register the base64 of the raw APNs token as their pushkey.
MATRIX_NOTIFY_PATH = "/_matrix/push/v1/notify"
MATRIX_APP_ID = "im.vector.app.ios"
#: Devices in one request of the ``matrix-4`` run (``matrix`` sends one, as Synapse does).
MATRIX_FANOUT_DEVICES = 4
#: Distinct devices (pushers) the Matrix runs cycle through.  pushd stores none: a
#: notify carries its pushkeys, so the store is not populated for them.
MATRIX_DEVICES = 4096
#: Matrix tokens are numbered from here, far above the native, Zulip and Mattermost ones.
_MATRIX_TOKEN_BASE = 1 << 56

#: Keys of :class:`CpuSnapshot` for the whole machine's busy and stolen CPU.
MACHINE = "machine"
STEAL = "steal"

_CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
#: utime and stime are fields 14 and 15 of /proc/<pid>/stat; after the ")" that ends
#: the command name (which may hold spaces) they are items 11 and 12.
_UTIME_AFTER_COMM = 11
_STIME_AFTER_COMM = 12


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds a process has used so far, all its threads included."""
    with open(f"/proc/{pid}/stat", encoding="ascii") as f:
        text = f.read()
    fields = text[text.rindex(")") + 2 :].split()
    return (int(fields[_UTIME_AFTER_COMM]) + int(fields[_STIME_AFTER_COMM])) / _CLOCK_TICKS


def status_kib(pid: int, field: str) -> int:
    """A ``kB`` field of /proc/<pid>/status, e.g. ``VmHWM`` (peak RSS) or ``VmRSS``."""
    with open(f"/proc/{pid}/status", encoding="ascii") as f:
        for line in f:
            name, _, value = line.partition(":")
            if name == field:
                return int(value.split()[0])
    raise KeyError(f"{field} is not in /proc/{pid}/status")


#: Columns of the "cpu" line of /proc/stat (after the label), in clock ticks.
_IDLE_COLUMNS = (3, 4)  # idle, iowait
_STEAL_COLUMN = 7
_BUSY_COLUMNS = 8  # user nice system idle iowait irq softirq steal; guest is inside user


def placement(pid: int) -> str:
    """Where a process may run and at what priority: its CPUs and its nice value.

    Nothing is pinned by the benchmark; this says so per process, so that a reader can
    tell a row whose processes were confined or reniced (``nice -n 10 run.py``, as on a
    shared machine, is inherited by every child) from one where they were not.
    """
    cpus = ",".join(str(cpu) for cpu in sorted(os.sched_getaffinity(pid)))
    return f"pid {pid} on CPUs {cpus}, nice {os.getpriority(os.PRIO_PROCESS, pid)}"


def machine_cpu() -> tuple[float, float]:
    """CPU seconds every core together spent busy, and stolen by the hypervisor, so far.

    The benchmark's processes are not alone on the machine; the difference between this
    and their own CPU is what everything else (and the kernel's networking) used.
    """
    with open("/proc/stat", encoding="ascii") as f:
        ticks = [int(v) for v in f.readline().split()[1 : 1 + _BUSY_COLUMNS]]
    idle = sum(ticks[i] for i in _IDLE_COLUMNS)
    steal = ticks[_STEAL_COLUMN]
    return (sum(ticks) - idle - steal) / _CLOCK_TICKS, steal / _CLOCK_TICKS


@attrs.frozen
class CpuSnapshot:
    """CPU seconds of several processes read at one moment, keyed by role."""

    seconds: dict[str, float]

    @classmethod
    def take(cls, pids: dict[str, int]) -> CpuSnapshot:
        """Each process's CPU seconds, plus the whole machine's as ``machine``/``steal``."""
        seconds = {role: cpu_seconds(pid) for role, pid in pids.items()}
        seconds[MACHINE], seconds[STEAL] = machine_cpu()
        return cls(seconds)

    def since(self, earlier: CpuSnapshot) -> dict[str, float]:
        return {role: value - earlier.seconds[role] for role, value in self.seconds.items()}


def free_port() -> int:
    """A TCP port on 127.0.0.1 free now (for a server that must be told its port)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def wait_for_stdin_eof() -> None:
    """Return once stdin is closed: the runner keeps a pipe open while it wants us alive.

    A pipe closes when its writer exits for any reason, SIGKILL included, so a child
    waiting on this cannot outlive the benchmark runner.
    """
    async with trio.lowlevel.FdStream(os.dup(0)) as stdin:
        while await stdin.receive_some():
            pass


def token(n: int) -> str:
    """The ``n``-th distinct device token: 64 hex digits, as APNs issues today."""
    return f"{n:064x}"


def fcm_token(n: int) -> str:
    """The ``n``-th distinct FCM registration token, shaped like the tests' ones.

    Real tokens are ~150 characters (``<instance id>:APA91b...``); this keeps the shape
    and the simulator's rule (20+ of ``[A-Za-z0-9_:-]``) at 63-64 characters, about an
    APNs token's length, so the two kinds cost the store alike.
    """
    return f"fcm-device-{n:04d}:APA91b{n:040x}"


def zulip_user_id(n: int) -> int:
    """The Zulip user id (``UserProfile.id``) of the ``n``-th benchmark Zulip user."""
    return n + 1


def zulip_user_uuid(n: int) -> str:
    """The ``n``-th Zulip user's uuid: Zulip >= 8 registers and notifies by it."""
    return str(uuid.UUID(int=zulip_user_id(n), version=4))


def zulip_token(n: int, device: int) -> str:
    """The APNs token of the ``n``-th Zulip user's ``device``-th phone (lower-case hex)."""
    return token(_ZULIP_TOKEN_BASE + n * ZULIP_DEVICES + device)


def mattermost_token(n: int) -> str:
    """The ``n``-th Mattermost device's APNs token (lower-case hex, in no table)."""
    return token(_MATTERMOST_TOKEN_BASE + n)


def matrix_token(n: int) -> str:
    """The ``n``-th Matrix device's APNs token (lower-case hex, in no table)."""
    return token(_MATRIX_TOKEN_BASE + n)


def matrix_pushkey(n: int) -> str:
    """The ``n``-th Matrix device's pushkey: standard, padded base64 of the raw 32-byte
    token, as Element iOS registers it (pushd sends it to APNs as :func:`matrix_token`)."""
    return base64.b64encode(bytes.fromhex(matrix_token(n))).decode()


#: The APNs upstreams a benchmark can run: the bundled simulator (judges every request:
#: tokens, topics, provider tokens; costs about as much CPU per notification as pushd)
#: and the lean stand-in (answers every request 200 for a few CPU-us; see
#: ``lean_apns.py``).  Both print READY and log their answers by status as they exit.
LEAN, SIMULATOR = "lean", "simulator"
UPSTREAMS = {LEAN: "lean_apns.py", SIMULATOR: "simulator.py"}
