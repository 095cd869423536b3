"""Fixtures: a real pushd on a loopback port, talking TLS + HTTP/2 to the APNs simulator.

Nothing is mocked between the test's HTTP client and the simulator: the test speaks
HTTP/1.1 to pushd's socket, pushd speaks HTTP/2 over TLS to the simulator's socket.
"""

from __future__ import annotations

import ssl
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import attrs
import httpx
import pytest
import trio
import trustme
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from pushd import config, server
from pushd.simulators.apns import ApnsSimulator
from pushd.simulators.fcm import FcmSimulator, configure_alpn, make_service_account
from pushd.store import open_store
from pushd.upstream.apns.jwt import write_p8
from tests.pg import pg_url  # noqa: F401  (a fixture, for every test module)
from tests.skipreasons import pytest_runtest_makereport  # noqa: F401  (a hook)
from tests.storefixtures import store, store_config, store_sections  # noqa: F401
from tests.zulip_client import ZulipServer, realm

FCM_PROJECT = "pushd-test"
FCM_EMAIL = f"pushd@{FCM_PROJECT}.iam.gserviceaccount.com"
KEY_ID = "TESTKEY001"
TEAM_ID = "TESTTEAM01"
TOPIC = "org.example.chat"
OTHER_TOPIC = "org.example.other"


@pytest.fixture(scope="session")
def ca() -> trustme.CA:
    return trustme.CA()


@pytest.fixture(scope="session")
def client_ctx(ca: trustme.CA) -> ssl.SSLContext:
    """A client's TLS context that trusts the session's CA (a module may narrow it, as
    ``test_sim_apns.py`` does to offer only h2)."""
    ctx = ssl.create_default_context()
    ca.configure_trust(ctx)
    return ctx


@pytest.fixture
def simulator_tls(ca: trustme.CA) -> ssl.SSLContext:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1", "localhost").configure_cert(context)
    context.set_alpn_protocols(["h2"])
    return context


@pytest.fixture
def ca_file(ca: trustme.CA, tmp_path: Path) -> Path:
    path = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(path))
    return path


@pytest.fixture(scope="session")
def apns_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


@pytest.fixture
def key_file(apns_key: ec.EllipticCurvePrivateKey, tmp_path: Path) -> Path:
    path = tmp_path / f"AuthKey_{KEY_ID}.p8"
    write_p8(path, apns_key)
    return path


@pytest.fixture
async def simulator(
    nursery: trio.Nursery, simulator_tls: ssl.SSLContext, apns_key: ec.EllipticCurvePrivateKey
) -> ApnsSimulator:
    sim = ApnsSimulator(topics=frozenset({TOPIC, OTHER_TOPIC}))
    sim.add_key(KEY_ID, TEAM_ID, apns_key.public_key())
    await nursery.start(sim.serve, simulator_tls)
    return sim


@pytest.fixture(scope="session")
def fcm_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


@pytest.fixture
def fcm_tls(ca: trustme.CA) -> ssl.SSLContext:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1", "localhost").configure_cert(context)
    return configure_alpn(context)


@pytest.fixture
async def fcm_sim(nursery: trio.Nursery, fcm_tls: ssl.SSLContext) -> FcmSimulator:
    """An FCM simulator that trusts no account yet."""
    sim = FcmSimulator()
    await nursery.start(sim.serve, fcm_tls)
    return sim


@pytest.fixture
def fcm_simulator(fcm_sim: FcmSimulator, fcm_key: rsa.RSAPrivateKey) -> FcmSimulator:
    """An FCM simulator that trusts the session's test service account."""
    fcm_sim.add_account(FCM_EMAIL, fcm_key.public_key(), FCM_PROJECT)
    return fcm_sim


def fcm_entry(
    name: str, sim: FcmSimulator, key: rsa.RSAPrivateKey, ca_file: Path, tmp_path: Path
) -> dict[str, Any]:
    account = tmp_path / f"{name}-service-account.json"
    make_service_account(
        account,
        FCM_PROJECT,
        sim.token_url,
        FCM_EMAIL,
        key=key,
    )
    return {
        "name": name,
        "provider": "fcm",
        "service_account_file": str(account),
        "upstream_url": sim.base_url,
        "upstream_ca_file": str(ca_file),
    }


def app_entry(
    name: str, topic: str, upstream: str, key_file: Path, ca_file: Path
) -> dict[str, Any]:
    return {
        "name": name,
        "provider": "apns",
        "environment": "sandbox",
        "topic": topic,
        "key_file": str(key_file),
        "key_id": KEY_ID,
        "team_id": TEAM_ID,
        "upstream_url": upstream,
        "upstream_ca_file": str(ca_file),
        "connections": 2,
    }


@attrs.define
class Pushd:
    """A running pushd: its URL, an HTTP client, and a chat server key to use."""

    url: str
    client: httpx.AsyncClient
    key: str
    config: config.Config
    services: server.Services
    stop: trio.Event

    def auth(self, key: str | None = None) -> dict[str, str]:
        return {"authorization": f"Bearer {key or self.key}"}

    async def post(self, path: str, body: Any, key: str | None = None) -> httpx.Response:
        return await self.client.post(self.url + path, json=body, headers=self.auth(key))

    async def register(self, user: str, token: str, app: str = "chat") -> httpx.Response:
        response = await self.post("/v1/devices", {"user": user, "token": token, "app": app})
        assert response.status_code in (200, 201), response.text
        return response

    async def send(self, body: dict[str, Any]) -> dict[str, Any]:
        response = await self.post("/v1/notifications", body)
        assert response.status_code == 200, response.text
        result: dict[str, Any] = response.json()
        return result


PushdFactory = Callable[..., Any]


@pytest.fixture
async def start_pushd(
    nursery: trio.Nursery,
    simulator: ApnsSimulator,
    key_file: Path,
    ca_file: Path,
    tmp_path: Path,
) -> AsyncIterator[PushdFactory]:
    """Start pushd with the given config overrides; returns a :class:`Pushd`."""
    clients: list[httpx.AsyncClient] = []
    stops: list[trio.Event] = []

    async def start(
        *, apps: list[dict[str, Any]] | None = None, **sections: dict[str, Any]
    ) -> Pushd:
        upstream = f"https://127.0.0.1:{simulator.port}"
        if apps is None:
            apps = [
                app_entry("chat", TOPIC, upstream, key_file, ca_file),
                app_entry("other", OTHER_TOPIC, upstream, key_file, ca_file),
            ]
        store_path = tmp_path / f"pushd-{len(stops)}.sqlite3"
        data: dict[str, Any] = {
            "server": {"listen": "127.0.0.1", "port": 0, **sections.pop("server", {})},
            "store": {"path": str(store_path)},
            "retry": {"base_delay": 0.05, "max_delay": 0.2, **sections.pop("retry", {})},
            # Any free port: tests run side by side, 9464 is for a real deployment.
            "metrics": {"port": 0, **sections.pop("metrics", {})},
            "apps": apps,
            **sections,
        }
        cfg = config.parse(data, base=tmp_path)
        assert config.check(cfg) == []
        database = await open_store(cfg.store)
        try:
            _, key = await database.add_server("test-server")
        finally:
            await database.close()
        stop = trio.Event()
        stops.append(stop)
        ready: list[server.Services] = []
        urls = await nursery.start(
            lambda task_status: server.serve(
                cfg,
                shutdown_trigger=stop.wait,
                on_ready=lambda services, _: ready.append(services),
                task_status=task_status,
            )
        )
        client = httpx.AsyncClient(timeout=30)
        clients.append(client)
        return Pushd(url=urls[0], client=client, key=key, config=cfg, services=ready[0], stop=stop)

    yield start
    for client in clients:
        await client.aclose()
    for stop in stops:
        stop.set()


@pytest.fixture
async def pushd(start_pushd: PushdFactory) -> Pushd:
    result: Pushd = await start_pushd()
    return result


def token(n: int) -> str:
    """A distinct, valid 64-hex-digit device token."""
    return f"{n:064x}"


@pytest.fixture
def start_bouncer(
    start_pushd: PushdFactory,
    simulator: ApnsSimulator,
    fcm_simulator: FcmSimulator,
    fcm_key: rsa.RSAPrivateKey,
    key_file: Path,
    ca_file: Path,
    tmp_path: Path,
) -> Callable[..., Awaitable[Pushd]]:
    """Starts pushd serving Zulip's bouncer with an APNs app (``ios``) and an FCM app
    (``android``, Zulip's FCM app), registration open; ``zulip`` settings override,
    ``sections`` are further config sections (a store backend)."""

    async def start(sections: dict[str, Any] | None = None, **zulip: Any) -> Pushd:
        upstream = f"https://127.0.0.1:{simulator.port}"
        apps = [
            app_entry("ios", TOPIC, upstream, key_file, ca_file),
            fcm_entry("android", fcm_simulator, fcm_key, ca_file, tmp_path),
        ]
        settings = {"registration": "open", "fcm_app": "android", **zulip}
        pushd: Pushd = await start_pushd(apps=apps, zulip=settings, **(sections or {}))
        return pushd

    return start


@pytest.fixture
async def bouncer(
    start_bouncer: Callable[..., Awaitable[Pushd]],
    store_sections: dict[str, Any],  # noqa: F811 (the fixture imported above)
) -> Pushd:
    """pushd serving Zulip's bouncer (:func:`start_bouncer`) on each store backend; a
    module whose tests need it otherwise defines its own."""
    return await start_bouncer(store_sections)


@pytest.fixture
async def zulip(bouncer: Pushd) -> ZulipServer:
    """A Zulip server registered with :func:`bouncer`, with one realm."""
    server = ZulipServer(client=bouncer.client, services_url=bouncer.url)
    assert (await server.register_server()).status_code == 200
    assert (await server.upload_analytics([realm(1)])).status_code == 200
    return server
