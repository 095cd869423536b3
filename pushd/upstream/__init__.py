"""Upstream clients: the only code that talks to APNs and FCM."""
