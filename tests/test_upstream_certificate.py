"""APNs refusing an app's client certificate in the TLS handshake (expired, revoked):
a credential error that pauses that app with an ALARM, not an outage retried for ever
(over HTTP, against a TLS server that sends the alert, and the APNs simulator)."""

from __future__ import annotations

import datetime
import ssl
from pathlib import Path

import pytest
import trio
import trustme

from pushd.simulators.apns import ApnsSimulator
from tests.conftest import PushdFactory
from tests.misbehaving import (
    BROKEN_DEVICE,
    HEALTHY_DEVICE,
    LocalServer,
    broken_and_healthy,
    send_alert,
)

#: Bytes asked of the socket per read during the handshake.
READ_SIZE = 1 << 16


class Refusing(LocalServer):
    """A TLS server that wants a client certificate from ``ca`` and refuses an expired
    one with the alert OpenSSL makes of it, as APNs does.  The handshake is driven by
    hand (a memory BIO) so that the alert is sent before the socket closes."""

    def __init__(self, context: ssl.SSLContext) -> None:
        super().__init__()
        self.context = context
        self.refused = 0

    async def connection(self, tcp: trio.SocketStream) -> None:
        incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
        tls = self.context.wrap_bio(incoming, outgoing, server_side=True)
        async with tcp:
            while True:
                try:
                    tls.do_handshake()
                except ssl.SSLWantReadError:
                    pass
                except ssl.SSLError:
                    self.refused += 1
                    await tcp.send_all(outgoing.read())  # the alert
                    return
                else:  # a certificate it took: nothing more to say
                    await tcp.send_all(outgoing.read())
                if outgoing.pending:
                    await tcp.send_all(outgoing.read())
                data = await tcp.receive_some(READ_SIZE)
                if not data:
                    return
                incoming.write(data)


@pytest.mark.parametrize("version", [ssl.TLSVersion.TLSv1_2, ssl.TLSVersion.TLSv1_3])
async def test_a_refused_client_certificate_pauses_the_app_with_an_alarm(
    nursery: trio.Nursery,
    start_pushd: PushdFactory,
    simulator: ApnsSimulator,
    ca: trustme.CA,
    key_file: Path,
    ca_file: Path,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
    version: ssl.TLSVersion,
) -> None:
    """APNs refuses an expired (or revoked) certificate with a TLS alert.  pushd took
    it for an outage: "APNs unreachable: SSLError" for every push, spooled until it
    expired, a reconnect a second while pushes came, no ALARM, the app "ok" in
    /healthz.  Now the alert is the credential failure it is: the push fails naming
    it, the app pauses with an ALARM (later pushes wait in the spool), and the other
    app delivers."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1").configure_cert(context)
    ca.configure_trust(context)
    context.verify_mode = ssl.CERT_REQUIRED
    context.maximum_version = version
    context.set_alpn_protocols(["h2"])
    refusing = Refusing(context)
    await nursery.start(refusing.serve)
    now = datetime.datetime.now(datetime.UTC)
    expired = ca.issue_cert(
        "pushd-client",
        not_before=now - datetime.timedelta(days=400),
        not_after=now - datetime.timedelta(days=1),
    )
    cert_file = tmp_path / "expired.pem"
    expired.private_key_and_cert_chain_pem.write_to_path(str(cert_file))
    cert_file.chmod(0o600)
    pushd = await broken_and_healthy(
        start_pushd, "refused", refusing.port, simulator, key_file, ca_file,
        {"key_file": None, "key_id": None, "team_id": None, "cert_file": str(cert_file),
         "connections": 1},
    )  # fmt: skip

    first = await send_alert(pushd, "refused", BROKEN_DEVICE)
    assert first["status"] == "failed", first
    assert "refused the client certificate" in first["reason"]
    later = await send_alert(pushd, "refused", BROKEN_DEVICE)
    assert later["status"] == "retrying"
    assert "paused" in later["reason"]
    assert (await send_alert(pushd, "healthy", HEALTHY_DEVICE))["status"] == "delivered"
    detail = (await pushd.client.get(pushd.url + "/healthz", headers=pushd.auth())).json()
    assert detail["apps"]["refused"]["state"] == "paused"
    assert detail["apps"]["healthy"]["state"] == "ok"
    assert any("ALARM app refused paused" in r.getMessage() for r in caplog.records)
    assert refusing.refused >= 1
