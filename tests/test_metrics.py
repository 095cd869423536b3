"""Prometheus metrics: a real pushd, real simulators, ``/metrics`` scraped over HTTP.

Outcomes are produced the way an admin would rehearse them: faults from ``pushd
simulate``'s ``--reply`` grammar (:mod:`pushd.simulators.faults`) applied to the
simulators pushd talks to over TLS and HTTP/2.
"""

from __future__ import annotations

import socket
import struct
from pathlib import Path
from typing import Any

import httpx
import trio
import trustme
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import rsa
from prometheus_client.parser import text_string_to_metric_families

from pushd import config
from pushd.metrics import merge
from pushd.metrics.tally import FAILED_REASONS, UPSTREAM_ERRORS
from pushd.model import mask_token
from pushd.simulators.apns import ApnsSimulator
from pushd.simulators.faults import parse_plan
from pushd.simulators.fcm import FcmSimulator
from tests.conftest import TOPIC, Pushd, PushdFactory, app_entry, fcm_entry, token

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def parse(text: str) -> Samples:
    """Every sample of a scrape, by name and label set."""
    samples: Samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return samples


def value(samples: Samples, name: str, **labels: str) -> float | None:
    return samples.get((name, frozenset(labels.items())))


def matching(samples: Samples, name: str, **labels: str) -> dict[frozenset[tuple[str, str]], float]:
    """The samples of ``name`` whose labels include ``labels``."""
    wanted = set(labels.items())
    return {key: v for (n, key), v in samples.items() if n == name and wanted <= key}


async def scrape(pushd: Pushd, headers: dict[str, str] | None = None) -> httpx.Response:
    assert pushd.services.metrics is not None
    (url,) = pushd.services.metrics.urls
    return await pushd.client.get(url, headers=headers or {})


async def test_a_scrape_counts_delivered_removed_retrying_and_failed(
    start_pushd: PushdFactory, simulator: ApnsSimulator
) -> None:
    pushd: Pushd = await start_pushd()
    dead, broken, flaky = token(2), token(3), token(4)
    parse_plan(
        [f"{dead}=410:Unregistered", f"{broken}=400:BadPriority", f"{flaky}=503", f"{flaky}=200"]
    ).apply(simulator, None)
    for n in (1, 2, 3, 4):
        await pushd.register("alice", token(n))
    answer = await pushd.send({"user": "alice", "alert": "the secret lunch plans"})
    statuses = {r["token"]: r["status"] for r in answer["results"]}
    assert statuses == {
        token(1): "delivered",
        dead: "removed",
        broken: "failed",
        flaky: "retrying",
    }
    with trio.fail_after(20):  # the retry of ``flaky`` delivers from the spool
        while len([r for r in simulator.received if r.token == flaky]) < 1:  # noqa: ASYNC110
            await trio.sleep(0.05)
        while pushd.services.dispatcher.depth.get("chat", 0):  # noqa: ASYNC110
            await trio.sleep(0.05)
    assert pushd.services.metrics is not None
    await pushd.services.metrics.refresh()  # the minute's registration count, now

    response = await scrape(pushd)
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain; version=0.0.4")
    text = response.text
    samples = parse(text)

    def notifications(outcome: str, reason: str = "") -> float | None:
        return value(
            samples,
            "pushd_notifications_total",
            app="chat",
            provider="apns",
            protocol="native",
            outcome=outcome,
            reason=reason,
        )

    assert notifications("delivered") == 2  # token 1, and token 4 on its retry
    assert notifications("removed") == 1
    assert notifications("failed", "rejected") == 1
    assert notifications("retrying", "server_error") == 1
    assert (
        value(
            samples,
            "pushd_upstream_errors_total",
            app="chat",
            provider="apns",
            reason="server_error",
        )
        == 1
    )
    assert (
        value(
            samples, "pushd_upstream_errors_total", app="chat", provider="apns", reason="rejected"
        )
        == 1
    )
    count = value(
        samples, "pushd_upstream_request_duration_seconds_count", app="chat", provider="apns"
    )
    assert count == 5  # four first attempts and one retry
    assert (
        value(
            samples,
            "pushd_upstream_request_duration_seconds_bucket",
            app="chat",
            provider="apns",
            le="+Inf",
        )
        == 5
    )
    # Three registrations left: the dead token is gone from the store.
    assert value(samples, "pushd_registrations", app="chat", protocol="native") == 3
    assert value(samples, "pushd_spool_depth", app="chat") == 0
    assert value(samples, "pushd_upstream_in_flight", app="chat") == 0
    assert value(samples, "pushd_circuit_state", app="chat", state="closed") == 1
    assert value(samples, "pushd_circuit_state", app="chat", state="open") == 0
    assert value(samples, "pushd_app_paused", app="other", reason="") == 0
    assert value(samples, "pushd_store_healthy") == 1
    assert matching(samples, "pushd_build_info")
    sent = value(
        samples, "pushd_http_requests_total", route="/v1/notifications", method="POST", status="200"
    )
    assert sent == 1
    assert (
        value(
            samples, "pushd_http_requests_total", route="/v1/devices", method="POST", status="201"
        )
        == 4
    )
    assert (
        value(
            samples,
            "pushd_http_request_duration_seconds_count",
            route="/v1/notifications",
            method="POST",
        )
        == 1
    )
    assert value(samples, "process_resident_memory_bytes")

    # Bounded labels only: no token (whole or masked), no content, no user.
    for secret in (token(1), dead, mask_token(dead), "secret lunch", "alice", pushd.key):
        assert secret not in text
    for labels, _ in matching(samples, "pushd_notifications_total").items():
        reason = dict(labels)["reason"]
        assert reason in FAILED_REASONS | {"", "server_error"}
    for labels in matching(samples, "pushd_upstream_errors_total"):
        assert dict(labels)["reason"] in UPSTREAM_ERRORS


async def test_routes_are_patterns_and_unknown_paths_one_label(start_pushd: PushdFactory) -> None:
    secret = "s3cr3t-path-prefix-0123456789"
    pushd: Pushd = await start_pushd(
        mattermost={"servers": [{"name": "mm", "path_secret": secret}]}
    )
    await pushd.client.post(f"{pushd.url}/{secret}/api/v1/send_push", json={})
    await pushd.client.get(f"{pushd.url}/{token(9)}/nothing-here")
    text = (await scrape(pushd)).text
    samples = parse(text)
    assert secret not in text and token(9) not in text
    assert matching(samples, "pushd_http_requests_total", route="/{secret}/api/v1/send_push")
    assert (
        value(samples, "pushd_http_requests_total", route="unmatched", method="", status="404") == 1
    )


async def test_malformed_requests_are_counted_unrouted(start_pushd: PushdFactory) -> None:
    """An unknown method or an oversized head is answered 400 / 431 before any route is
    found; the count still shows it (a scanner or a broken client is visible)."""
    pushd: Pushd = await start_pushd()
    host, port = pushd.url.removeprefix("http://").rsplit(":", 1)
    for raw in (
        b"BREW / HTTP/1.1\r\nhost: x\r\n\r\n",
        b"GET / HTTP/1.1\r\n" + b"a: 1\r\n" * 200 + b"\r\n",
    ):
        stream = await trio.open_tcp_stream(host, int(port))
        async with stream:
            await stream.send_all(raw)
            answer = b""
            while chunk := await stream.receive_some(65536):
                answer += chunk
        assert answer.startswith((b"HTTP/1.1 400", b"HTTP/1.1 431")), answer[:40]
    samples = parse((await scrape(pushd)).text)
    for status in ("400", "431"):
        assert (
            value(samples, "pushd_http_requests_total", route="unmatched", method="", status=status)
            == 1
        ), status


async def test_rate_limited_requests_are_counted_by_protocol(start_pushd: PushdFactory) -> None:
    pushd: Pushd = await start_pushd(native={"rate_limit": 1})
    before = (
        value(
            parse((await scrape(pushd)).text),
            "pushd_rate_limited_requests_total",
            protocol="native",
        )
        or 0
    )
    for _ in range(3):
        await pushd.post("/v1/users/devices", {"user": "u"})
    after = value(
        parse((await scrape(pushd)).text), "pushd_rate_limited_requests_total", protocol="native"
    )
    assert after == before + 2


async def test_a_credential_error_shows_the_app_paused_with_its_reason(
    start_pushd: PushdFactory, simulator: ApnsSimulator
) -> None:
    pushd: Pushd = await start_pushd()
    parse_plan([f"{token(5)}=403:InvalidProviderToken"]).apply(simulator, None)
    await pushd.register("bob", token(5))
    await pushd.send({"user": "bob", "alert": "x"})
    samples = parse((await scrape(pushd)).text)
    assert value(samples, "pushd_app_paused", app="chat", reason="InvalidProviderToken") == 1
    assert value(samples, "pushd_app_paused", app="other", reason="") == 0
    assert (
        value(
            samples, "pushd_upstream_errors_total", app="chat", provider="apns", reason="credential"
        )
        == 1
    )


async def test_certificate_expiry_is_exported_and_absent_for_token_auth(
    start_pushd: PushdFactory,
    simulator: ApnsSimulator,
    key_file: Path,
    ca_file: Path,
    tmp_path: Path,
) -> None:
    issued = trustme.CA().issue_cert("push.example")
    cert_file = tmp_path / "push.pem"
    cert_file.write_bytes(
        b"".join(blob.bytes() for blob in issued.cert_chain_pems) + issued.private_key_pem.bytes()
    )
    not_after = x509.load_pem_x509_certificate(
        issued.cert_chain_pems[0].bytes()
    ).not_valid_after_utc.timestamp()
    upstream = f"https://127.0.0.1:{simulator.port}"
    certificate_app = {
        **{
            k: v
            for k, v in app_entry("cert", TOPIC, upstream, key_file, ca_file).items()
            if k not in ("key_file", "key_id", "team_id")
        },
        "cert_file": str(cert_file),
    }
    pushd: Pushd = await start_pushd(
        apps=[app_entry("chat", TOPIC, upstream, key_file, ca_file), certificate_app]
    )
    samples = parse((await scrape(pushd)).text)
    assert value(samples, "pushd_credential_expiry_timestamp_seconds", app="cert") == not_after
    assert value(samples, "pushd_credential_expiry_timestamp_seconds", app="chat") is None


async def test_a_bearer_token_is_required_when_configured(
    start_pushd: PushdFactory, tmp_path: Path
) -> None:
    secret = "metrics-token-0123456789abcdef"
    (tmp_path / "metrics.token").write_text(secret + "\n")
    pushd: Pushd = await start_pushd(
        metrics={"port": 0, "bearer_token_file": str(tmp_path / "metrics.token")}
    )
    refused = await scrape(pushd)
    assert refused.status_code == 401
    assert refused.headers["www-authenticate"].startswith("Bearer")
    assert "pushd_" not in refused.text
    wrong = await scrape(pushd, {"authorization": "Bearer metrics-token-0123456789abcdeX"})
    assert wrong.status_code == 401
    assert (await scrape(pushd, {"authorization": pushd.key})).status_code == 401
    allowed = await scrape(pushd, {"authorization": f"Bearer {secret}"})
    assert allowed.status_code == 200
    assert "pushd_build_info" in allowed.text


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


async def test_disabled_metrics_open_no_listener(start_pushd: PushdFactory) -> None:
    port = free_port()
    pushd: Pushd = await start_pushd(metrics={"enabled": False, "port": port})
    assert pushd.services.metrics is None
    assert pushd.services.dispatcher.tally is None  # nothing counted on the hot path
    with socket.socket() as sock:
        assert sock.connect_ex(("127.0.0.1", port)) != 0
    # The API still answers, and has no /metrics of its own.
    assert (await pushd.client.get(pushd.url + "/metrics")).status_code == 404


async def test_the_metrics_port_is_not_the_api_port(start_pushd: PushdFactory) -> None:
    pushd: Pushd = await start_pushd()
    assert (await pushd.client.get(pushd.url + "/metrics")).status_code == 404
    assert (await scrape(pushd)).status_code == 200


async def open_connections(pushd: Pushd) -> float | None:
    return value(parse((await scrape(pushd)).text), "pushd_http_open_connections")


async def test_open_connections_count_kept_alive_ones_until_they_close(
    start_pushd: PushdFactory,
) -> None:
    """Three clients each keep a connection to the API port after a request: the gauge
    counts them, the metrics listener's own connection not; closed, they leave it."""
    pushd: Pushd = await start_pushd()
    before = await open_connections(pushd)
    assert before is not None
    clients = [httpx.AsyncClient() for _ in range(3)]
    try:
        for client in clients:
            assert (await client.get(pushd.url + "/healthz")).status_code == 200
        assert await open_connections(pushd) == before + 3
    finally:
        for client in clients:
            await client.aclose()
    with trio.fail_after(10):  # pushd sees each close on its next read
        while await open_connections(pushd) != before:  # noqa: ASYNC110
            await trio.sleep(0.05)


def checked(tmp_path: Path, metrics: dict[str, Any]) -> list[str]:
    cfg = config.parse({"store": {"path": str(tmp_path / "db")}, "metrics": metrics}, base=tmp_path)
    return config.check(cfg)


def test_a_listener_off_loopback_needs_a_token(tmp_path: Path) -> None:
    assert checked(tmp_path, {}) == []
    assert checked(tmp_path, {"listen": "::1"}) == []
    (problem,) = checked(tmp_path, {"listen": "0.0.0.0"})
    assert problem.startswith("metrics.bearer_token_file: required when metrics.listen")
    (tmp_path / "short").write_text("abc")
    (problem,) = checked(tmp_path, {"listen": "0.0.0.0", "bearer_token_file": "short"})
    assert problem.startswith("metrics.bearer_token_file: must hold one token")
    (tmp_path / "good").write_text("x" * 32)
    assert checked(tmp_path, {"listen": "0.0.0.0", "bearer_token_file": "good"}) == []
    assert checked(tmp_path, {"listen": "0.0.0.0", "enabled": False}) == []
    (problem,) = checked(tmp_path, {"port": 70000})
    assert problem.startswith("metrics.port:")


async def test_the_reload_hooks_count_reloads_and_take_the_new_config(
    start_pushd: PushdFactory, tmp_path: Path
) -> None:
    import attrs

    from pushd import metrics

    pushd: Pushd = await start_pushd()
    before = parse((await scrape(pushd)).text)
    metrics.record_reload(ok=False)
    after = parse((await scrape(pushd)).text)
    for name in ("pushd_config_reloads_total", "pushd_config_reload_failures_total"):
        assert value(after, name) == (value(before, name) or 0) + 1
    assert value(after, "pushd_config_last_reload_successful") == 0
    metrics.record_reload(ok=True)
    assert value(parse((await scrape(pushd)).text), "pushd_config_last_reload_successful") == 1
    # A reload that adds a bearer token: the next scrape needs it.
    secret = "a-new-metrics-token-0123456789"
    (tmp_path / "token").write_text(secret)
    reloaded = attrs.evolve(
        pushd.config,
        metrics=attrs.evolve(pushd.config.metrics, bearer_token_file=str(tmp_path / "token")),
    )
    metrics.reload(reloaded)
    assert (await scrape(pushd)).status_code == 401
    assert (await scrape(pushd, {"authorization": f"Bearer {secret}"})).status_code == 200


def test_a_busy_metrics_port_stops_pushd_with_one_line(tmp_path: Path) -> None:
    from tests.test_serve_startup import assert_one_line, serve_config, write_config

    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        held.listen()
        port = held.getsockname()[1]
        path = write_config(tmp_path)  # on a store made beforehand: no "created" line
        path.write_text(
            path.read_text().replace("[metrics]\nport = 0", f"[metrics]\nport = {port}")
        )
        done = serve_config(path)
    assert_one_line(done, f"metrics: cannot listen on 127.0.0.1:{port}: address already in use")


def test_check_config_says_where_prometheus_scrapes(tmp_path: Path) -> None:
    from pushd.checkconfig import report

    def line(metrics: dict[str, Any]) -> str:
        cfg = config.parse(
            {"store": {"path": str(tmp_path / "db")}, "metrics": metrics}, base=tmp_path
        )
        (found,) = [item for item in report("pushd.toml", cfg) if "metrics:" in item]
        return found.strip()

    assert line({}) == "metrics: http://127.0.0.1:9464/metrics"
    assert line({"enabled": False}) == "metrics: off"
    assert line({"listen": "::", "port": 9100, "bearer_token_file": "t"}) == (
        "metrics: http://[::]:9100/metrics, bearer token required"
    )


async def test_fcm_outcomes_carry_their_provider(
    start_pushd: PushdFactory,
    simulator: ApnsSimulator,
    fcm_simulator: FcmSimulator,
    fcm_key: rsa.RSAPrivateKey,
    key_file: Path,
    ca_file: Path,
    tmp_path: Path,
) -> None:
    upstream = f"https://127.0.0.1:{simulator.port}"
    pushd: Pushd = await start_pushd(
        apps=[
            app_entry("ios", TOPIC, upstream, key_file, ca_file),
            fcm_entry("android", fcm_simulator, fcm_key, ca_file, tmp_path),
        ]
    )
    alive, gone = "fcm-device-alive:APA91b" + "a" * 40, "fcm-device-gone:APA91b" + "b" * 40
    parse_plan([f"{gone}=UNREGISTERED"], fcm=True).apply(simulator, fcm_simulator)
    for device in (alive, gone):
        await pushd.register("dan", device, app="android")
    answer = await pushd.send({"user": "dan", "alert": "x"})
    assert sorted(r["status"] for r in answer["results"]) == ["delivered", "removed"]
    samples = parse((await scrape(pushd)).text)
    for outcome in ("delivered", "removed"):
        labels = {"app": "android", "provider": "fcm", "protocol": "native", "reason": ""}
        assert value(samples, "pushd_notifications_total", outcome=outcome, **labels) == 1
    count = value(
        samples, "pushd_upstream_request_duration_seconds_count", app="android", provider="fcm"
    )
    assert count == 2
    assert value(samples, "pushd_circuit_state", app="android", state="closed") == 1


async def test_a_worker_that_resets_the_scrape_counts_as_down_not_a_failed_merge(
    nursery: trio.Nursery,
) -> None:
    """A worker killed while the supervisor reads its metrics resets the connection:
    trio's BrokenResourceError (not an OSError) failed the whole merged scrape with a
    500; now that worker is down for this scrape and the rest are served."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    port = listener.getsockname()[1]

    def reset_after_reading() -> None:
        connection, _ = listener.accept()
        connection.recv(4096)
        connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        connection.close()  # RST: what a killed process's half-read socket sends

    try:
        nursery.start_soon(trio.to_thread.run_sync, reset_after_reading)
        assert await merge.fetch(f"http://127.0.0.1:{port}/metrics", "token") is None
    finally:
        listener.close()
