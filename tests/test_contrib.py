"""contrib/: the alert rules and dashboard hold together, and name only metrics that a
running pushd exports; nginx's configuration proxies to a real pushd.

promtool (Debian's ``prometheus`` package) and nginx are used where installed; the
tests that need them skip with a message elsewhere (``.ci/run`` installs both).
"""

from __future__ import annotations

import json
import re
import shutil
import signal
import ssl
import subprocess
from pathlib import Path

import httpx
import pytest
import trio
import trustme
from cryptography.hazmat.primitives.asymmetric import rsa

from pushd.metrics import merge
from pushd.simulators.apns import ApnsSimulator
from pushd.simulators.fcm import FcmSimulator
from tests.conftest import TOPIC, PushdFactory, app_entry, fcm_entry

CONTRIB = Path(__file__).resolve().parent.parent / "contrib"
RULES = CONTRIB / "prometheus" / "pushd-alerts.yml"
RULE_TESTS = CONTRIB / "prometheus" / "pushd-alerts.test.yml"
DASHBOARD = CONTRIB / "grafana" / "pushd-dashboard.json"
NGINX_SITE = CONTRIB / "nginx" / "pushd.conf"
#: Series Prometheus makes itself, not pushd.
PROMETHEUS_OWN = frozenset({"up"})
#: What Grafana puts into a query before Prometheus sees it.
GRAFANA_VARIABLES = {
    "$__rate_interval": "5m",
    "$__range": "1h",
    "$instance": ".*",
    "$app": ".*",
}
_KEYWORDS = frozenset({"and", "or", "unless", "bool", "offset", "inf", "nan"})
_CLAUSE = re.compile(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)")


def promtool() -> str:
    found = shutil.which("promtool")
    if found is None:
        pytest.skip("promtool is not installed (Debian: apt-get install prometheus)")
    return found


def metric_names(expr: str) -> set[str]:
    """The metric names a PromQL expression reads (not functions, labels or keywords)."""
    expr = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)
    expr = re.sub(r"\{[^}]*\}", "", expr)
    expr = re.sub(r"\[[^\]]*\]", "", expr)
    expr = _CLAUSE.sub("", expr)
    names = set()
    for match in re.finditer(r"(?<![\w.])[a-zA-Z_:][a-zA-Z0-9_:]*", expr):
        word = match.group(0)
        if expr[match.end() :].lstrip().startswith("(") or word.lower() in _KEYWORDS:
            continue
        names.add(word)
    return names


def rule_expressions() -> list[str]:
    import yaml  # schemathesis brings PyYAML

    rules = yaml.safe_load(RULES.read_text())
    return [rule["expr"] for group in rules["groups"] for rule in group["rules"]]


def dashboard_expressions() -> list[str]:
    """Every panel query, Grafana's variables replaced as Grafana would."""
    dashboard = json.loads(DASHBOARD.read_text())
    expressions = []
    for panel in dashboard["panels"]:
        for target in panel.get("targets", []):
            expr = target["expr"]
            for variable, value in GRAFANA_VARIABLES.items():
                expr = expr.replace(variable, value)
            expressions.append(expr)
    return expressions


def dashboard_variable_metrics() -> set[str]:
    dashboard = json.loads(DASHBOARD.read_text())
    names = set()
    for variable in dashboard["templating"]["list"]:
        if variable["type"] == "query":
            match = re.match(r"label_values\(([a-zA-Z_:][\w:]*)", variable["definition"])
            assert match, variable["definition"]
            names.add(match.group(1))
    return names


def test_metric_names_are_found_in_expressions() -> None:
    expr = 'sum by (app) (rate(a_total{x="y{z}"}[5m])) / on (app) b > 2 and time() - c_2 < 14'
    assert metric_names(expr) == {"a_total", "b", "c_2"}


def test_promtool_checks_the_alert_rules() -> None:
    done = subprocess.run(
        [promtool(), "check", "rules", str(RULES)], capture_output=True, text=True, check=False
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "SUCCESS: 12 rules found" in done.stdout


def test_promtool_unit_tests_of_the_alert_rules_pass() -> None:
    done = subprocess.run(
        [promtool(), "test", "rules", RULE_TESTS.name],
        cwd=RULE_TESTS.parent,
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "SUCCESS" in done.stdout


def test_every_dashboard_query_is_valid_promql(tmp_path: Path) -> None:
    """promtool parses each panel's query, written as a recording rule."""
    import yaml

    rules = [
        {"record": f"pushd_dashboard:query{n}", "expr": expr}
        for n, expr in enumerate(dashboard_expressions())
    ]
    path = tmp_path / "dashboard-queries.yml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}))
    done = subprocess.run(
        [promtool(), "check", "rules", str(path)], capture_output=True, text=True, check=False
    )
    assert done.returncode == 0, done.stdout + done.stderr


def exported_names(text: str) -> set[str]:
    """Sample names a scrape can hold, from its ``# TYPE`` lines (a family with no
    samples yet still declares itself)."""
    names = set()
    suffixes = {"histogram": ("_bucket", "_sum", "_count")}
    for match in re.finditer(r"^# TYPE (\S+) (\S+)$", text, re.MULTILINE):
        name, kind = match.groups()
        if kind == "counter" and not name.endswith("_total"):
            name += "_total"
        for suffix in suffixes.get(kind, ("",)):
            names.add(name + suffix)
    return names


async def test_rules_and_dashboard_name_only_metrics_pushd_exports(
    start_pushd: PushdFactory,
    simulator: ApnsSimulator,
    fcm_simulator: FcmSimulator,
    fcm_key: rsa.RSAPrivateKey,
    key_file: Path,
    ca_file: Path,
    tmp_path: Path,
) -> None:
    upstream = f"https://127.0.0.1:{simulator.port}"
    pushd = await start_pushd(
        apps=[
            app_entry("ios", TOPIC, upstream, key_file, ca_file),
            fcm_entry("android", fcm_simulator, fcm_key, ca_file, tmp_path),
        ]
    )
    assert pushd.services.metrics is not None
    (url,) = pushd.services.metrics.urls
    text = (await pushd.client.get(url)).text
    exported = exported_names(text)
    assert {"pushd_notifications_total", "pushd_upstream_request_duration_seconds_bucket"} <= (
        exported
    )
    # With [server] workers, the supervisor adds its own series to the merged scrape.
    exported |= exported_names(merge.supervisor_series([merge.WorkerView(0, "", 0)], [True]))
    assert {"pushd_worker_up", "pushd_worker_restarts_total"} <= exported
    assert 'pushd_app_paused{app="android",reason=""} 0.0' in text
    referenced: dict[str, set[str]] = {}
    for source, expressions in (
        ("alert rules", rule_expressions()),
        ("dashboard", dashboard_expressions()),
    ):
        for expr in expressions:
            for name in metric_names(expr):
                referenced.setdefault(name, set()).add(source)
    for name in dashboard_variable_metrics():
        referenced.setdefault(name, set()).add("dashboard variables")
    unknown = {
        name: sorted(sources)
        for name, sources in referenced.items()
        if name not in exported and name not in PROMETHEUS_OWN
    }
    assert unknown == {}
    # The rules cover what the issue asks of them.
    rule_names = set().union(*(metric_names(expr) for expr in rule_expressions()))
    assert {
        "pushd_app_paused",
        "pushd_app_mismatch_alarm",
        "pushd_credential_expiry_timestamp_seconds",
        "pushd_spool_oldest_due_age_seconds",
        "pushd_upstream_errors_total",
        "pushd_http_requests_total",
    } <= rule_names


# --- nginx ---------------------------------------------------------------------------


def nginx_site(site: str, *, listen: int, pushd_port: int, cert: Path, key: Path) -> str:
    """contrib's site with the EDIT lines filled in for this test."""
    replacements = {
        "server 127.0.0.1:8080;": f"server 127.0.0.1:{pushd_port};",
        "listen 443 ssl;": f"listen 127.0.0.1:{listen} ssl;",
        "listen [::]:443 ssl;": "",
        "listen 80;": f"listen 127.0.0.1:{listen + 1};",
        "listen [::]:80;": "",
        "/etc/letsencrypt/live/push.example.com/fullchain.pem": str(cert),
        "/etc/letsencrypt/live/push.example.com/privkey.pem": str(key),
    }
    for old, new in replacements.items():
        assert old in site, old
        site = site.replace(old, new)
    return site


def free_port_pair() -> int:
    import socket

    while True:
        with socket.socket() as first:
            first.bind(("127.0.0.1", 0))
            port: int = first.getsockname()[1]
            with socket.socket() as second:
                try:
                    second.bind(("127.0.0.1", port + 1))
                except OSError:
                    continue
            return port


async def test_nginx_proxies_with_tls_and_passes_the_client_address(
    start_pushd: PushdFactory, tmp_path: Path
) -> None:
    nginx = shutil.which("nginx", path="/usr/sbin:/usr/bin:/sbin:/bin")
    if nginx is None:
        pytest.skip("nginx is not installed (Debian: apt-get install nginx-light)")
    secret = "contrib-nginx-path-secret-0123"
    pushd = await start_pushd(
        server={"trusted_proxies": ["127.0.0.1/32"]},
        mattermost={
            "servers": [{"name": "mm", "path_secret": secret, "allowed_networks": ["127.0.0.2/32"]}]
        },
    )
    ca = trustme.CA()
    issued = ca.issue_cert("push.example.com", "127.0.0.1")
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    issued.cert_chain_pems[0].write_to_path(str(cert))
    issued.private_key_pem.write_to_path(str(key))
    port = free_port_pair()
    pushd_port = int(pushd.url.rsplit(":", 1)[1])
    site = nginx_site(
        NGINX_SITE.read_text(), listen=port, pushd_port=pushd_port, cert=cert, key=key
    )
    (tmp_path / "logs").mkdir()
    conf = tmp_path / "nginx.conf"
    conf.write_text(
        f"""
daemon off;
master_process off;
pid {tmp_path}/nginx.pid;
error_log stderr warn;
events {{ worker_connections 64; }}
http {{
    access_log off;
    client_body_temp_path {tmp_path}/body;
    proxy_temp_path {tmp_path}/proxy;
    fastcgi_temp_path {tmp_path}/fastcgi;
    uwsgi_temp_path {tmp_path}/uwsgi;
    scgi_temp_path {tmp_path}/scgi;
    {site}
}}
"""
    )
    checked = await trio.run_process(
        [nginx, "-t", "-p", str(tmp_path), "-c", str(conf)], capture_stderr=True, check=False
    )
    assert checked.returncode == 0, checked.stderr.decode()
    process = await trio.lowlevel.open_process(
        [nginx, "-p", str(tmp_path), "-c", str(conf)], stderr=subprocess.DEVNULL
    )
    try:
        allowed = await get_version(port, secret, "127.0.0.2", ca)
        refused = await get_version(port, secret, "127.0.0.3", ca)
    finally:
        process.send_signal(signal.SIGQUIT)
        with trio.move_on_after(10):
            await process.wait()
        if process.returncode is None:
            process.kill()
    # pushd sees each client's own address through nginx: 127.0.0.2, which
    # allowed_networks admits, gets the version; 127.0.0.3 is refused by source.
    assert allowed.status_code == 200, allowed.text
    assert "version" in allowed.json()
    assert refused.status_code == 403, refused.text


async def get_version(port: int, secret: str, source: str, ca: trustme.CA) -> httpx.Response:
    """``GET /<secret>/version`` through nginx over TLS, from the address ``source``."""
    verify = ssl.create_default_context()
    ca.configure_trust(verify)
    transport = httpx.AsyncHTTPTransport(local_address=source, verify=verify)
    async with httpx.AsyncClient(transport=transport, timeout=10) as client:
        with trio.fail_after(20):
            while True:
                try:
                    return await client.get(f"https://127.0.0.1:{port}/{secret}/version")
                except httpx.ConnectError:  # nginx is still starting
                    await trio.sleep(0.1)


async def test_a_scrape_passes_promtools_metric_lint(
    start_pushd: PushdFactory, simulator: ApnsSimulator
) -> None:
    """``promtool check metrics``: Prometheus' own naming and format conventions
    (counters end in ``_total``, base units, help text), on a scrape after traffic."""
    tool = promtool()
    pushd = await start_pushd()
    await pushd.register("erin", "e" * 64)
    await pushd.send({"user": "erin", "alert": "x"})
    assert pushd.services.metrics is not None
    (url,) = pushd.services.metrics.urls
    text = (await pushd.client.get(url)).text
    assert "pushd_notifications_total{" in text
    done = await trio.run_process(
        [tool, "check", "metrics"],
        stdin=text.encode(),
        capture_stdout=True,
        capture_stderr=True,
        check=False,
    )
    assert done.returncode == 0, (done.stdout + done.stderr).decode()
    assert done.stdout + done.stderr == b""
