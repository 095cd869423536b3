"""The status page in a real headless Chromium against a real pushd and the APNs
simulator: the token asked for and kept in session storage (never in the URL), the
apps rendered, numbers that change in place after real deliveries, a paused app, a
screenshot that shows the rows, nothing requested from elsewhere and nothing the
Content-Security-Policy had to block.  Skips, saying why, without a browser."""

from __future__ import annotations

import datetime
import io
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import trustme

from pushd.frontends.status import PAGE_PATH
from pushd.simulators.apns import ApnsSimulator, SimReply
from tests import browser
from tests.browser import call, until
from tests.conftest import TOPIC, Pushd, PushdFactory, app_entry, token
from tests.test_status_page import ADMIN_TOKEN, start_guarded

#: Seconds to wait for the page: its refresh period (5 s) and some slack.
PAGE_WAIT = 15.0
#: Seconds to wait for something the page does at once.
QUICK_WAIT = 5.0
#: A rendered page's greyscale pixels vary at least this much; a blank one not at all.
MIN_STDDEV = 8.0
#: The smallest a rendered app row may be, in CSS pixels.
MIN_ROW = (600, 20)
TOKEN_KEY = "pushd-status-token"


@pytest.fixture(scope="module")
def driver() -> Iterator[Any]:
    session = browser.launch()
    if isinstance(session, str):
        pytest.skip(session)
    try:
        yield session
    finally:
        session.quit()


@pytest.fixture
async def guarded(start_pushd: PushdFactory, tmp_path: Path) -> Pushd:
    return await start_guarded(start_pushd, tmp_path)


def script(driver: Any, source: str) -> Any:
    return driver.execute_script(source)


def cell(driver: Any, app: str, field: str) -> str:
    """The text of ``field`` in ``app``'s row, or "" while there is none."""
    text = script(
        driver,
        f'const c = document.querySelector(\'tr[data-app="{app}"] td[data-field="{field}"]\');'
        "return c ? c.textContent : '';",
    )
    return str(text)


def app_states(driver: Any) -> dict[str, str]:
    rows = script(
        driver,
        "return [...document.querySelectorAll('#apps tbody tr')]"
        ".map(r => [r.dataset.app, r.dataset.state]);",
    )
    return dict(rows)


async def sign_in(driver: Any, pushd: Pushd, credential: str) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    await call(driver.get, pushd.url + PAGE_PATH)
    field = await call(driver.find_element, By.ID, "token")
    await until(field.is_displayed, QUICK_WAIT, "the token field")
    await call(field.send_keys, credential + Keys.ENTER)


def loaded(driver: Any) -> bool:
    return script(driver, "return document.body.dataset.loaded === 'true';") is True


async def test_the_page_follows_real_deliveries_in_place(
    driver: Any, guarded: Pushd, simulator: ApnsSimulator
) -> None:
    await call(browser.requested_urls, driver)  # forget earlier tests' requests
    await sign_in(driver, guarded, ADMIN_TOKEN)
    await until(lambda: loaded(driver), QUICK_WAIT, "the first status")
    assert await call(app_states, driver) == {"chat": "ok", "other": "ok"}
    assert await call(cell, driver, "chat", "delivered") == "0"
    # The token is in this tab's session storage, not in the URL or the field.
    assert await call(script, driver, f"return sessionStorage.getItem('{TOKEN_KEY}');") == (
        ADMIN_TOKEN
    )
    assert await call(lambda: driver.current_url) == guarded.url + PAGE_PATH
    assert await call(script, driver, "return document.getElementById('token').value;") == ""
    await call(script, driver, "window.sameDocument = true;")

    for n in range(3):
        await guarded.register("ann", token(n))
    await guarded.register("bob", token(9), app="other")
    simulator.script(token(9), SimReply(status=403, reason="InvalidProviderToken"))
    await guarded.send({"user": "ann", "alert": "one"})
    await guarded.send({"user": "ann", "alert": "two"})
    await guarded.send({"user": "bob", "alert": "pauses other"})

    await until(
        lambda: cell(driver, "chat", "delivered") == "6", PAGE_WAIT, "6 delivered on the page"
    )
    await until(lambda: app_states(driver)["other"] == "paused", QUICK_WAIT, "other paused")
    assert "InvalidProviderToken" in await call(cell, driver, "other", "state")
    assert await call(cell, driver, "other", "failed") == "1"
    assert await call(cell, driver, "chat", "error_rate") == "0.0 %"
    assert float(await call(cell, driver, "chat", "per_minute")) > 0
    assert await call(script, driver, "return window.sameDocument === true;")  # no reload
    last = await call(
        script,
        driver,
        'return document.querySelector(\'tr[data-server="native/test-server"] '
        'td[data-field="last_request"]\').textContent;',
    )
    assert last.endswith(" ago")
    overall = await call(script, driver, "return document.getElementById('overall').textContent;")
    assert overall == "degraded"

    # Nothing but pushd itself was asked for anything: the page, then its JSON.
    urls = await call(browser.requested_urls, driver)
    assert urls and all(url.startswith(guarded.url + "/") for url in urls), urls
    assert guarded.url + "/status.json" in urls
    assert not any(ADMIN_TOKEN in url for url in urls)
    # And nothing had to be blocked by the policy, nor failed in the script.
    logs = await call(driver.get_log, "browser")
    assert [entry for entry in logs if entry["level"] == "SEVERE"] == []


async def test_a_screenshot_shows_the_app_rows(
    driver: Any, guarded: Pushd, simulator: ApnsSimulator, tmp_path: Path
) -> None:
    from PIL import Image, ImageStat
    from selenium.webdriver.common.by import By

    await guarded.register("ann", token(1))
    await guarded.register("bob", token(2), app="other")
    simulator.script(token(2), SimReply(status=403, reason="InvalidProviderToken"))
    await guarded.send({"user": "ann", "alert": "x"})
    await guarded.send({"user": "bob", "alert": "x"})
    await sign_in(driver, guarded, ADMIN_TOKEN)
    await until(lambda: loaded(driver), QUICK_WAIT, "the first status")

    png = await call(driver.get_screenshot_as_png)
    (tmp_path / "status.png").write_bytes(png)
    image = Image.open(io.BytesIO(png)).convert("RGB")
    assert image.size[0] >= browser.WINDOW[0] * 0.9
    assert ImageStat.Stat(image.convert("L")).stddev[0] > MIN_STDDEV
    ratio = await call(script, driver, "return window.devicePixelRatio;")
    rows = await call(driver.find_elements, By.CSS_SELECTOR, "#apps tbody tr")
    assert len(rows) == 2
    for row in rows:
        rect = await call(lambda row=row: row.rect)
        assert rect["width"] >= MIN_ROW[0] and rect["height"] >= MIN_ROW[1], rect
        box = tuple(
            round(value * ratio)
            for value in (
                rect["x"],
                rect["y"],
                rect["x"] + rect["width"],
                rect["y"] + rect["height"],
            )
        )
        crop = image.crop(box)
        assert ImageStat.Stat(crop.convert("L")).stddev[0] > MIN_STDDEV, "a blank row"
        state = await call(row.get_attribute, "data-state")
        red = any(r > 150 and g < 90 and b < 90 for r, g, b in crop.get_flattened_data())
        assert red == (state == "paused"), f"{state} row drawn {'with' if red else 'without'} red"
    chart = await call(
        driver.find_element, By.CSS_SELECTOR, 'tr[data-app="chat"] td[data-field="chart"] rect'
    )
    assert (await call(lambda: chart.rect))["height"] >= 1  # the live bucket's bar


async def test_a_wrong_token_is_refused_and_forgotten(driver: Any, guarded: Pushd) -> None:
    from selenium.webdriver.common.by import By

    await sign_in(driver, guarded, "not-the-token")
    error = await call(driver.find_element, By.ID, "login-error")
    message = await until(lambda: error.text, QUICK_WAIT, "the refusal")
    assert "refused" in message and "unknown admin token" in message
    assert await call(script, driver, f"return sessionStorage.getItem('{TOKEN_KEY}');") is None
    assert not await call(loaded, driver)
    # The right one, then "Forget token": back to the form, storage cleared.
    field = await call(driver.find_element, By.ID, "token")
    await call(field.send_keys, ADMIN_TOKEN + "\n")
    await until(lambda: loaded(driver), QUICK_WAIT, "the status")
    await call((await call(driver.find_element, By.ID, "signout")).click)
    await until(field.is_displayed, QUICK_WAIT, "the token field again")
    assert await call(script, driver, f"return sessionStorage.getItem('{TOKEN_KEY}');") is None
    await call(driver.get_log, "browser")  # the 401 is logged as a failed load: expected


async def test_a_certificate_about_to_expire_is_flagged(
    driver: Any,
    start_pushd: PushdFactory,
    simulator: ApnsSimulator,
    ca: trustme.CA,
    ca_file: Path,
    key_file: Path,
    tmp_path: Path,
) -> None:
    soon = datetime.datetime.now(datetime.UTC) + datetime.timedelta(days=5, hours=1)
    leaf = ca.issue_cert("push.example.com", not_after=soon)
    cert_file = tmp_path / "apns.pem"
    cert_file.write_bytes(leaf.cert_chain_pems[0].bytes() + leaf.private_key_pem.bytes())
    token_app = app_entry("chat", TOPIC, f"https://127.0.0.1:{simulator.port}", key_file, ca_file)
    cert_app = {
        **{k: v for k, v in token_app.items() if k not in ("key_file", "key_id", "team_id")},
        "name": "legacy",
        "cert_file": str(cert_file),
    }
    pushd = await start_guarded(start_pushd, tmp_path, apps=[token_app, cert_app])
    await sign_in(driver, pushd, ADMIN_TOKEN)
    await until(lambda: loaded(driver), QUICK_WAIT, "the first status")
    flagged = await call(
        script,
        driver,
        "return [...document.querySelectorAll('td[data-field=\"credential\"] .expiring')]"
        ".map(e => [e.closest('tr').dataset.app, e.textContent]);",
    )
    assert flagged == [["legacy", f"expires {soon.date().isoformat()} (5 days)"]]
    assert "does not expire" in await call(cell, driver, "chat", "credential")
