"""The Matrix push gateway API (``POST /_matrix/push/v1/notify``), as Sygnal serves it.

A homeserver's pushers point at pushd exactly as at Sygnal, and Element-style apps get
Sygnal's payloads, but pushd answers better (protocol notes §5.2): devices are sent at
once, one device never fails another, transient failures are retried in the background
after a prompt answer, and a token found dead later is reported on the next notify.
See :mod:`.wire` (request and answers), :mod:`.payloads` (Sygnal's APNs and FCM
mapping) and :mod:`.gateway` (routes, app matching, access control, delivery).
"""

from pushd.frontends.matrix.gateway import MatrixGateway

__all__ = ["MatrixGateway"]
