"""The explorer page in a real headless Chromium (Debian's ``chromium``, driven by playwright):
search, open a result, walk to a neighbour; a screenshot is checked for the product image and
the contribution bars. Skips only when no chromium is installed (scripts/setup.sh installs it)."""

from __future__ import annotations

import io
import math
import shutil
import socket
import threading
import time
from contextlib import contextmanager
from typing import Any, Iterator

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


@contextmanager
def browser_page() -> Iterator[tuple[Any, list[str]]]:
    """A page in headless Chromium, and the page errors and failed requests seen on it."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, headless=True)
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 1100})
            errors: list[str] = []
            page.on("pageerror", lambda e: errors.append(str(e)))
            page.on("requestfailed", lambda r: errors.append(f"request failed: {r.url}"))
            yield page, errors
        finally:
            browser.close()


def test_search_product_neighbour_walk_and_screenshot(base_url: str, catalog, tmp_path) -> None:
    with browser_page() as (page, errors):
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
        # each card says how likely it is the same product, as the published list does
        listed = page.evaluate(f"fetch('/v1/products/{first_id}/neighbors').then(r => r.json())")["neighbors"]
        badges = [cards.nth(i).locator(".match").text_content() for i in range(5)]
        # Math.round: halves go up (Python's round would go to even)
        assert badges == [f" · same product {math.floor(100 * n['match_probability'] + 0.5)} %" for n in listed]
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


def test_url_state_resubmit_keyboard_and_the_weights_panel(base_url: str, catalog) -> None:
    """Filters and weights live in the URL (a shared link shows the same view); re-submitting the
    same query renders again; cards are reachable and openable by keyboard; moving a weight
    slider re-ranks live with query-time weights."""
    def renders(page) -> int:
        return int(page.evaluate("Number(document.body.dataset.renders || 0)"))

    with browser_page() as (page, errors):
        # a shared link: the filters come from the URL into the inputs and into the results
        page.goto(base_url + "/#/search/headphones?brand=sony")
        page.wait_for_selector(".result-card")
        assert page.input_value("#f-brand") == "sony" and page.input_value("#search-input") == "headphones"
        ids = [c.get_attribute("data-id") for c in page.locator(".result-card").all()]
        assert ids and all(catalog.docs[i]["brand"].lower() == "sony" for i in ids), ids
        # the same query submitted again renders again (the URL does not change)
        before = renders(page)
        page.press("#search-input", "Enter")
        page.wait_for_function(f"Number(document.body.dataset.renders) > {before}")
        # a changed filter applied from its own form: the URL and the results follow
        page.fill("#f-brand", "")
        page.fill("#f-category", "Home > Kitchen")
        page.press("#f-category", "Enter")
        page.wait_for_function("location.hash.includes('category=')")
        page.wait_for_function("[...document.querySelectorAll('.result-card')].length > 0 && "
                               "document.body.dataset.ready === location.hash")
        ids = [c.get_attribute("data-id") for c in page.locator(".result-card").all()]
        assert ids and all(catalog.docs[i]["category"].startswith("Home > Kitchen") for i in ids), ids
        # keyboard: focus the first card, arrow to the next, Enter opens it
        page.fill("#f-category", "")
        page.goto(base_url + "/#/search/headphones")
        page.wait_for_function("document.body.dataset.ready === location.hash")
        page.locator(".result-card").first.focus()
        page.keyboard.press("ArrowRight")
        second = page.locator(".result-card").nth(1).get_attribute("data-id")
        assert page.evaluate("document.activeElement.dataset.id") == second
        page.keyboard.press("Enter")
        page.wait_for_function(f"location.hash.startsWith('#/product/{second}')")
        page.wait_for_selector(".neighbor-card")
        assert "published list" in page.text_content("#freshness")
        published = [c.get_attribute("data-id") for c in page.locator(".neighbor-card").all()]
        # the weights panel: only the image counts now; the list re-ranks live, as the API ranks it
        for f in catalog.encoder.weights:  # the fields the vectors hold
            if f != "image":
                page.locator(f"#weights input[data-field={f}]").fill("0")
        page.wait_for_function("(new URLSearchParams(location.hash.split('?')[1] || '').get('weights') || '')"
                               ".split(',').length >= 6 && document.body.dataset.ready === location.hash")
        assert "query-time weights" in page.text_content("#freshness")
        weights = page.evaluate("new URLSearchParams(location.hash.split('?')[1]).get('weights')")
        api = page.evaluate(f"fetch('/v1/products/{second}/neighbors?weights=' + encodeURIComponent('{weights}'))"
                            ".then(r => r.json())")
        shown = [c.get_attribute("data-id") for c in page.locator(".neighbor-card").all()]
        assert shown == [n["product_id"] for n in api["neighbors"]] != published
        assert all(set(n["fields"]) <= {"image"} for n in api["neighbors"])
        page.click("#weights-reset")
        page.wait_for_function("!location.hash.includes('weights=') && document.body.dataset.ready === location.hash")
        assert [c.get_attribute("data-id") for c in page.locator(".neighbor-card").all()] == published
        assert errors == []
