"""The explorer page in a real headless Chromium (Debian's ``chromium``, driven by playwright):
search, open a result, walk to a neighbour; a screenshot is checked for the product image and
the contribution bars. Skips only when no chromium is installed (scripts/setup.sh installs it)."""

from __future__ import annotations

import io
import shutil
import socket
import threading
import time
from typing import Iterator

import numpy as np
import pytest
import uvicorn
from PIL import Image

from simstream.serve.app import create_app

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="no chromium on PATH: `apt-get install -y chromium` "
                                                          "(scripts/setup.sh does it when run as root)")
COLORS = {"text": "#457b9d", "title_lexical": "#e9c46a", "mpn": "#f4a261", "image": "#2a9d8f",
          "brand": "#e76f51", "category": "#8e7dbe", "price": "#6a994e"}  # serve/static/app.js


@pytest.fixture(scope="module")
def base_url(catalog) -> Iterator[str]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    app = create_app(catalog.settings, milvus=catalog.store.milvus, encoder=catalog.encoder)
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_config=None, access_log=False))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        assert time.monotonic() < deadline and thread.is_alive(), "uvicorn did not start"
        time.sleep(0.05)
    yield f"http://127.0.0.1:{port}"
    server.should_exit = True
    thread.join(15)


def rgb(hex_colour: str) -> np.ndarray:
    return np.array([int(hex_colour[i:i + 2], 16) for i in (1, 3, 5)])


def crop(shot: Image.Image, box: dict[str, float]) -> np.ndarray:
    return np.asarray(shot.crop((int(box["x"]), int(box["y"]), int(box["x"] + box["width"]),
                                 int(box["y"] + box["height"]))).convert("RGB")).astype(int)


def test_search_product_neighbour_walk_and_screenshot(base_url: str, catalog, tmp_path) -> None:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, headless=True)
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 1100})
            errors: list[str] = []
            page.on("pageerror", lambda e: errors.append(str(e)))
            page.on("requestfailed", lambda r: errors.append(f"request failed: {r.url}"))
            page.goto(base_url + "/")
            page.fill("#search-input", "wireless noise cancelling headphones")
            page.press("#search-input", "Enter")
            try:
                page.wait_for_selector(".result-card", timeout=20_000)
            except Exception:
                raise AssertionError(f"no results: status {page.text_content('#status')!r}, errors {errors}, "
                                     f"hash {page.evaluate('location.hash')!r}") from None
            first = page.locator(".result-card").first
            first_id = first.get_attribute("data-id")
            assert first_id in catalog.docs and first_id.startswith("hp-")

            first.click()
            page.wait_for_function("document.body.dataset.ready && document.body.dataset.ready.startsWith('#/product/')")
            assert page.text_content("#product-title") == catalog.docs[first_id]["title"]
            assert "published list" in page.text_content("#freshness")
            cards = page.locator(".neighbor-card")
            assert cards.count() == 5
            page.wait_for_function("[...document.querySelectorAll('img')].every(i => i.complete && i.naturalWidth > 0)")

            neighbour = cards.first.get_attribute("data-id")
            cards.first.click()
            page.wait_for_function(f"document.body.dataset.ready === '#/product/{neighbour}'")
            page.wait_for_function("[...document.querySelectorAll('img')].every(i => i.complete && i.naturalWidth > 0)")
            assert page.text_content("#product-title") == catalog.docs[neighbour]["title"]
            assert errors == []

            path = tmp_path / "explorer.png"
            page.screenshot(path=str(path), full_page=True)
            shot = Image.open(io.BytesIO(path.read_bytes()))
            # the product image rendered: a varied region, not a blank box
            pixels = crop(shot, page.locator("#product img").bounding_box())
            assert pixels.std() > 20, "the product image region is blank"
            # the first neighbour's bar shows a segment of each positive contribution, in its colour
            api = page.evaluate(f"fetch('/v1/products/{neighbour}/neighbors').then(r => r.json())")
            fields = {f: v for f, v in api["neighbors"][0]["fields"].items() if v > 0.01}
            bar = crop(shot, page.locator(".neighbor-card .bar").first.bounding_box())
            flat = bar.reshape(-1, 3)
            for f in fields:
                share = (np.abs(flat - rgb(COLORS[f])).sum(axis=1) <= 6).mean()
                assert share > 0.5 * fields[f] * 0.8, (f, share, fields[f])  # width ∝ contribution
            background = (np.abs(flat - rgb("#edf0f4")).sum(axis=1) <= 6).mean()
            assert abs(background - (1 - sum(fields.values()))) < 0.1
        finally:
            browser.close()
