"""A real headless Chromium for tests, driven by Selenium through Debian's chromedriver.

Selenium is synchronous and pushd runs in the test's trio loop, so every browser call
goes through a worker thread (:func:`call`) and waits are polled from trio
(:func:`until`): the loop keeps serving the browser's requests meanwhile.

Where Chromium, its driver or Selenium is missing, :func:`launch` says why, so the
tests skip with that message (``.ci/run`` installs them).  Selenium is never allowed
to fetch a driver of its own: the paths are given.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from typing import Any, Final, TypeVar

import trio

#: Where Debian (and other distributions) put the browser and its driver.
BROWSERS: Final = ("chromium", "chromium-browser", "google-chrome")
DRIVERS: Final = ("chromedriver",)
WINDOW: Final = (1400, 1000)
#: Chromium flags: headless, as root in a container, and quiet: no background traffic
#: of its own (updates, sync), so the only requests are the page's.
FLAGS: Final = (
    "--headless=new",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-default-apps",
    "--disable-sync",
    "--no-first-run",
    "--hide-scrollbars",
    f"--window-size={WINDOW[0]},{WINDOW[1]}",
)
POLL_SECONDS: Final = 0.1

T = TypeVar("T")


def launch() -> Any:
    """A new browser session, or a string saying why there cannot be one."""
    try:
        from selenium import webdriver
        from selenium.common.exceptions import WebDriverException
        from selenium.webdriver.chrome.service import Service
    except ImportError:
        return "selenium is not installed (pip install -e '.[test]')"
    browser = next((path for name in BROWSERS if (path := shutil.which(name))), None)
    driver = next((path for name in DRIVERS if (path := shutil.which(name))), None)
    if browser is None or driver is None:
        return "no chromium and chromedriver on PATH (apt-get install chromium chromium-driver)"
    options = webdriver.ChromeOptions()
    options.binary_location = browser
    for flag in FLAGS:
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"performance": "ALL", "browser": "ALL"})
    try:
        return webdriver.Chrome(service=Service(driver), options=options)
    except WebDriverException as error:
        return f"chromium did not start: {error.msg}"


async def call(fn: Callable[..., T], *args: Any) -> T:
    """Run a blocking Selenium call in a thread, so pushd keeps serving meanwhile."""
    return await trio.to_thread.run_sync(fn, *args)


async def until(check: Callable[[], T], within: float, what: str) -> T:
    """Poll ``check`` (in a thread) until it returns something true; fail after
    ``within`` seconds saying ``what`` was awaited."""
    last: T | None = None
    with trio.move_on_after(within):
        while True:
            last = await call(check)
            if last:
                return last
            await trio.sleep(POLL_SECONDS)
    raise AssertionError(f"timed out after {within} s waiting for {what} (last: {last!r})")


def requested_urls(driver: Any) -> list[str]:
    """Every URL the page asked for since the last call, from DevTools' network log."""
    urls = []
    for entry in driver.get_log("performance"):
        message = json.loads(entry["message"])["message"]
        if message["method"] == "Network.requestWillBeSent":
            urls.append(message["params"]["request"]["url"])
    return urls
