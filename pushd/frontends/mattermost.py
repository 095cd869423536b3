"""The Mattermost push proxy API (``/api/v1/send_push``, ``/api/v1/ack``, ``/version``)."""

from __future__ import annotations

from pushd.config import Config
from pushd.dispatch import Dispatcher
from pushd.frontends.http import Route
from pushd.store.sqlite import Store


class MattermostProxy:
    """Serves Mattermost servers as mattermost-push-proxy does."""

    def __init__(self, config: Config, store: Store, dispatcher: Dispatcher) -> None:
        self.config = config
        self.store = store
        self.dispatcher = dispatcher

    def routes(self) -> list[Route]:
        return []
