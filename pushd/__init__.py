"""pushd: a self-hosted mobile push notification gateway for chat servers."""

__version__ = "0.1.0"
