"""The Zulip push notification bouncer: a drop-in for Zulip's ``push.zulipchat.com``.

``wire`` holds Zulip's HTTP conventions (errors, form and JSON bodies, validators, the
rate limit), ``payloads`` the pure reshaping of legacy notifications, ``api`` the
handlers.  End-to-end encrypted pushes will get a module of their own beside them.
"""

from pushd.frontends.zulip.api import ZulipBouncer

__all__ = ["ZulipBouncer"]
