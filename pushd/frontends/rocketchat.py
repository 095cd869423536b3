"""The Rocket.Chat push gateway API (``/push/apn/send``, ``/push/gcm/send``)."""

from __future__ import annotations

from pushd.config import Config
from pushd.dispatch import Dispatcher
from pushd.frontends.http import Route
from pushd.store.sqlite import Store


class RocketChatGateway:
    """Serves Rocket.Chat servers as Rocket.Chat's cloud push gateway does."""

    def __init__(self, config: Config, store: Store, dispatcher: Dispatcher) -> None:
        self.config = config
        self.store = store
        self.dispatcher = dispatcher

    def routes(self) -> list[Route]:
        return []
