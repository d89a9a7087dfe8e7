"""`ipoke app` in a real browser: a drag on the page's canvas becomes the poke, the samples appear, keys work.

Needs Playwright's Python package and a Chromium binary (`apt-get install chromium`; never `playwright install`, which
downloads a browser), so it is marked slow and skipped where either is missing. Run with `pytest -m slow
tests/test_app_browser.py`.
"""

from __future__ import annotations

import json
import shutil
import threading

import numpy as np
import pytest

from ipoke.app import PokeApp, make_server
from ipoke.sampling import Poker

pytestmark = pytest.mark.slow
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


STATUS = "document.getElementById('status').textContent"


def _app(tiny_model, tmp_path) -> PokeApp:
    images = [np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)]
    return PokeApp(Poker.from_checkpoint(tiny_model), images, samples=2, out=tmp_path / "saved")


def _in_browser(app: PokeApp, actions) -> None:  # noqa: ANN001
    """Serve ``app``, open its page in headless Chromium, drag the poke (20, 30) -> (25, 27) in model pixels, then
    run ``actions(page)``."""
    sync_api = pytest.importorskip("playwright.sync_api")
    server = make_server(app, port=0)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        with sync_api.sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=CHROMIUM, headless=True, args=["--no-sandbox"])
            page = browser.new_page()
            page.goto(f"http://127.0.0.1:{server.server_address[1]}/")
            page.wait_for_function(f"{STATUS}.startsWith('drag')")
            box = page.locator("#image").bounding_box()
            left, top = box["x"] + 1, box["y"] + 1  # inside the 1 px border; 64 model px are 256 css px
            page.mouse.move(left + 4 * 20, top + 4 * 30)
            page.mouse.down()
            page.mouse.move(left + 4 * 25, top + 4 * 27, steps=4)
            page.mouse.up()
            actions(page)
            browser.close()
    finally:
        server.shutdown()
        server.server_close()


@pytest.mark.skipif(CHROMIUM is None, reason="needs a chromium binary")
def test_a_drag_in_the_browser_pokes_the_model(tiny_model, tmp_path):
    def save(page) -> None:  # noqa: ANN001
        page.wait_for_function("document.querySelectorAll('#samples img').length == 2", timeout=60000)
        page.keyboard.press("s")
        page.wait_for_function(f"{STATUS}.startsWith('saved')", timeout=60000)

    _in_browser(_app(tiny_model, tmp_path), save)
    record = json.loads((tmp_path / "saved" / "poke_0" / "ipoke_sample.json").read_text())
    np.testing.assert_allclose(record["pokes_in_model_pixels"], [[20, 30, 5, -3]], atol=1e-6)


@pytest.mark.skipif(CHROMIUM is None, reason="needs a chromium binary")
def test_keys_pressed_while_sampling_are_not_lost_and_save_writes_what_is_shown(tiny_model, tmp_path):
    # Pressing r (new samples) while a request was out was dropped: the status then named the new seed over the old
    # samples, and s saved the new seed's videos, which were never shown.
    app = _app(tiny_model, tmp_path)
    release, seen = threading.Event(), []
    answer = app.poke

    def slow_poke(body):  # noqa: ANN001
        seen.append(body["seed"])
        if len(seen) == 1:
            release.wait(30)  # the first answer waits until both key presses are in
        return answer(body)

    app.poke = slow_poke

    def press_r_twice_then_save(page) -> None:  # noqa: ANN001
        page.wait_for_function(f"{STATUS} == 'sampling...'")
        page.keyboard.press("r")
        page.keyboard.press("r")
        release.set()
        page.wait_for_function(f"{STATUS}.includes('seed 2')", timeout=60000)
        page.keyboard.press("s")
        page.wait_for_function(f"{STATUS}.startsWith('saved')", timeout=60000)

    _in_browser(app, press_r_twice_then_save)
    assert seen == [0, 2]  # the stale answer was replaced by one request for the latest seed
    record = json.loads((tmp_path / "saved" / "poke_0" / "ipoke_sample.json").read_text())
    assert record["seed"] == 2
