"""The Mattermost push proxy API, as mattermost-push-proxy (MPNS) serves it.

A Mattermost server whose "Push Notification Server" setting points at
``https://<pushd>/<path_secret>`` talks to pushd exactly as to MPNS: one synchronous
``POST /api/v1/send_push`` per device and event, answered with HTTP 200 and
``{"status": "OK" | "REMOVE" | "FAIL"}``.  Nothing is stored: every push carries its
device token.  See :mod:`.wire` (request parsing, answers, throttle), :mod:`.payloads`
(the APNs and FCM messages MPNS builds) and :mod:`.proxy` (routes, access control,
delivery within the server's patience).
"""

from pushd.frontends.mattermost.proxy import MattermostProxy

__all__ = ["MattermostProxy"]
