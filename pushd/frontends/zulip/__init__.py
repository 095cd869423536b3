"""The Zulip push notification bouncer: a drop-in for Zulip's ``push.zulipchat.com``.

``wire`` holds Zulip's HTTP conventions (errors, form and JSON bodies, validators, the
rate limit), ``payloads`` the pure reshaping of legacy notifications and
``e2ee_payloads`` of end-to-end encrypted ones.  ``api`` mounts the routes, authenticates
servers and looks up realms; the handlers are grouped by flow: ``legacy`` (device
registrations, notifications in the clear), ``e2ee`` (encrypted pushes),
``registration`` (registering a server) and ``servers`` (analytics, deactivate).
"""

from pushd.frontends.zulip.api import ZulipBouncer

__all__ = ["ZulipBouncer"]
