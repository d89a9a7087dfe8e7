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


@pytest.mark.skipif(CHROMIUM is None, reason="needs a chromium binary")
def test_a_drag_in_the_browser_pokes_the_model(tiny_model, tmp_path):
    sync_api = pytest.importorskip("playwright.sync_api")
    images = [np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)]
    app = PokeApp(Poker.from_checkpoint(tiny_model), images, samples=2, out=tmp_path / "saved")
    server = make_server(app, port=0)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    status = "document.getElementById('status').textContent"
    try:
        with sync_api.sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=CHROMIUM, headless=True, args=["--no-sandbox"])
            page = browser.new_page()
            page.goto(f"http://127.0.0.1:{server.server_address[1]}/")
            page.wait_for_function(f"{status}.startsWith('drag')")
            box = page.locator("#image").bounding_box()
            left, top = box["x"] + 1, box["y"] + 1  # inside the 1 px border; 64 model px are 256 css px
            page.mouse.move(left + 4 * 20, top + 4 * 30)
            page.mouse.down()
            page.mouse.move(left + 4 * 25, top + 4 * 27, steps=4)
            page.mouse.up()
            page.wait_for_function("document.querySelectorAll('#samples img').length == 2", timeout=60000)
            page.keyboard.press("s")
            page.wait_for_function(f"{status}.startsWith('saved')", timeout=60000)
            browser.close()
    finally:
        server.shutdown()
        server.server_close()
    record = json.loads((tmp_path / "saved" / "poke_0" / "ipoke_sample.json").read_text())
    np.testing.assert_allclose(record["pokes_in_model_pixels"], [[20, 30, 5, -3]], atol=1e-6)
