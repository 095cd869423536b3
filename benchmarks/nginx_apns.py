"""A lean APNs stand-in for ``workers.py``: nginx answering 200 over TLS + HTTP/2.

Why: the bundled APNs simulator (``simulator.py``) is Python on the ``h2`` library and
spends ~0.2 CPU-ms per notification, about as much as pushd itself.  On a 2-core
machine that leaves two workers no second core, whatever they could do.  nginx (C)
answers the same requests for a few microseconds each, so a 1-vs-2-workers row
measures pushd rather than its upstream.  Optional (``apt-get install nginx-light``):
:func:`find_nginx` returns None when it is absent and ``workers.py`` keeps the Python
simulator, saying so.

What pushd sees is what it sees from APNs in the happy path: TLS 1.3 with ALPN ``h2``
(a private CA, as the simulator's), ``:status 200`` with an ``apns-id`` header and no
body, up to 1,000 concurrent streams per connection (APNs' and the simulator's
limit), no connection ever closed by the server.  What it does not do: judge the
request (topic, token, provider token) -- the Python simulator's job, which the
tests and the default benchmark rows keep doing.

Counting: nginx's access log holds one status per request (no path, so no device
token reaches the disk), buffered; nginx flushes it when it stops gracefully.
:meth:`NginxApns.answers` reads it as the simulator's ``answers by status`` so the
caller checks the same thing: exactly one 200 per notification sent.

One process (``master_process off``), so its CPU is one pid's, as the simulator's is.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

from pushd.simulators.certs import make_self_signed

#: The binary's name; ``PATH`` decides which one.
NGINX = "nginx"
#: APNs' SETTINGS_MAX_CONCURRENT_STREAMS once a provider token is accepted.
MAX_STREAMS = 1000
#: Requests on one connection before nginx would close it: never, in a run.
KEEPALIVE_REQUESTS = 1 << 30
#: The access log's write buffer: one write per ~40,000 requests, not one each.
LOG_BUFFER = "256k"
START_TIMEOUT = 10.0
STOP_TIMEOUT = 10.0
POLL = 0.02

_CONFIG = """\
daemon off;
master_process off;
worker_processes 1;
pid {dir}/nginx.pid;
error_log {dir}/nginx-error.log warn;
events {{ worker_connections 1024; }}
http {{
    log_format status_only '$status';
    access_log {dir}/nginx-access.log status_only buffer={buffer};
    client_body_temp_path {dir}/body;
    proxy_temp_path {dir}/proxy;
    fastcgi_temp_path {dir}/fastcgi;
    uwsgi_temp_path {dir}/uwsgi;
    scgi_temp_path {dir}/scgi;
    keepalive_requests {keepalive};
    keepalive_timeout 3600s;
    http2_max_concurrent_streams {streams};
    client_header_timeout 3600s;
    server {{
        listen 127.0.0.1:{port} ssl http2;
        ssl_certificate {dir}/nginx-cert.pem;
        ssl_certificate_key {dir}/nginx-key.pem;
        ssl_protocols TLSv1.2 TLSv1.3;
        server_tokens off;
        location /3/device/ {{
            add_header apns-id $request_id always;
            return 200;
        }}
        location / {{ return 404; }}
    }}
}}
"""


def find_nginx() -> str | None:
    """nginx's path, or None if it is not installed."""
    return shutil.which(NGINX)


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


class NginxApns:
    """A running nginx; :attr:`port`, :attr:`pid`, and its answers once stopped."""

    def __init__(self, directory: Path, ca_out: Path) -> None:
        binary = find_nginx()
        if binary is None:
            raise RuntimeError("nginx is not installed")
        self.directory = directory
        tls = make_self_signed()
        tls.write_ca(ca_out)
        (directory / "nginx-cert.pem").write_bytes(tls.server_cert_pem)
        key = os.open(directory / "nginx-key.pem", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(key, "wb") as f:
            f.write(tls.server_key_pem)
        self.access_log = directory / "nginx-access.log"
        self.access_log.unlink(missing_ok=True)
        self.port = _free_port()
        config = directory / "nginx.conf"
        config.write_text(
            _CONFIG.format(
                dir=directory,
                port=self.port,
                buffer=LOG_BUFFER,
                keepalive=KEEPALIVE_REQUESTS,
                streams=MAX_STREAMS,
            )
        )
        argv = [binary, "-p", str(directory), "-e", str(directory / "nginx-error.log"),
                "-c", str(config)]  # fmt: skip
        self.process = subprocess.Popen(argv, stdin=subprocess.DEVNULL)
        self.pid = self.process.pid
        self._wait_listening()

    def _wait_listening(self) -> None:
        deadline = time.monotonic() + START_TIMEOUT
        while True:
            with (
                contextlib.suppress(OSError),
                socket.create_connection(("127.0.0.1", self.port), timeout=1),
            ):
                return
            if self.process.poll() is not None or time.monotonic() > deadline:
                self.stop()
                errors = (self.directory / "nginx-error.log").read_text(errors="replace")
                raise RuntimeError(f"nginx did not start:\n{errors[-2000:]}")
            time.sleep(POLL)

    def stop(self) -> None:
        """Graceful stop (SIGQUIT: the access log is flushed), then kill if slow."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGQUIT)
            try:
                self.process.wait(STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()

    def answers(self) -> dict[str, int]:
        """Answers by status, as the simulator reports them (call after :meth:`stop`)."""
        if not self.access_log.exists():
            return {}
        with open(self.access_log, encoding="ascii") as f:
            return dict(Counter(line.strip() for line in f if line.strip()))


@contextlib.contextmanager
def running_nginx(directory: Path, ca_out: Path) -> Iterator[NginxApns]:
    server = NginxApns(directory, ca_out)
    try:
        yield server
    finally:
        server.stop()
