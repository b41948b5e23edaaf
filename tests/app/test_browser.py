"""End to end: the real server on a loopback port, the page driven in headless Chromium.

Set POSTERGENRE_SCREENSHOTS=DIR to keep the screenshots (docs/screenshots/): desktop.png,
phone.png and heatmap.png (a phone after tapping a lower genre).
"""

from __future__ import annotations

import math
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from PIL import Image

from postergenre.inference.onnx_engine import sample_posters

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
PHONE = {"width": 390, "height": 844}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server():
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "postergenre", "serve", "--port", str(port)],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    base = f"http://127.0.0.1:{port}"
    deadline = time.time() + 120
    while time.time() < deadline:
        try:
            if httpx.get(base + "/api/health", timeout=2).status_code in (200, 503):
                break
        except httpx.TransportError:
            time.sleep(0.3)
        assert proc.poll() is None, proc.stdout.read()
    yield base
    proc.terminate()
    proc.wait(timeout=20)


@pytest.fixture(scope="module")
def browser():
    from playwright.sync_api import sync_playwright

    assert Path(CHROMIUM).exists(), "Chromium is missing: scripts/setup.sh installs Debian's chromium"
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox", "--disable-gpu"])
        yield b
        b.close()


@pytest.fixture(scope="module")
def shots(tmp_path_factory) -> Path:
    out = Path(os.environ.get("POSTERGENRE_SCREENSHOTS") or tmp_path_factory.mktemp("screenshots"))
    out.mkdir(parents=True, exist_ok=True)
    return out


def open_page(browser, server, viewport=None, **kw):
    """A fresh page on the app, the model ready, and ``seen``: what it fetched from elsewhere and
    every 4xx/5xx answer it got (a missing favicon included)."""
    from playwright.sync_api import expect

    page = browser.new_page(viewport=viewport or {"width": 1280, "height": 900}, **kw)
    seen = {"external": [], "failed": []}
    local = (server, "blob:", "data:")
    page.on("request", lambda r: None if r.url.startswith(local) else seen["external"].append(r.url))
    # (/api/health says 503 while the model loads: that is its answer, not a failure)
    page.on("response", lambda r: seen["failed"].append(f"{r.status} {r.url}")
            if r.status >= 400 and not r.url.endswith("/api/health") else None)
    page.goto(server + "/")
    expect(page.locator("#status")).to_contain_text("ready", timeout=90_000)
    return page, seen


def posted(page) -> list:
    """The /api/predict requests ``page`` sends from now on."""
    sent = []
    page.on("request", lambda r: sent.append(r) if r.url.endswith("/api/predict") else None)
    return sent


def heatmap_of(page, card, li) -> float:
    """Tap the genre ``li`` of ``card``, wait for its heatmap, check that the legend shows the bar's
    score (issue 27: one score on the card); return the image's score the server sent (X-Score)."""
    from playwright.sync_api import expect

    with page.expect_response("**/api/explain", timeout=60_000) as answer:
        li.click()
    expect(card.locator("img.heat")).to_be_visible(timeout=60_000)
    bar = li.locator(".value").inner_text()
    expect(card.locator(".heat-genre")).to_have_text(f"{li.get_attribute('data-genre')} {bar}:")
    return float(answer.value.headers["x-score"])


def test_page_upload_shows_genres_and_heatmap(server, browser, shots, tmp_path):
    from playwright.sync_api import expect

    page, seen = open_page(browser, server)
    expect(page.locator("#drop strong")).to_have_text("Drop posters here")  # a mouse and room: drop or choose
    expect(page.locator(".for-touch")).to_be_hidden()
    page.set_input_files("#files", [str(p) for p in sample_posters()[:2]])
    cards = page.locator("article.card")
    expect(cards).to_have_count(2, timeout=30_000)
    assert cards.evaluate_all("els => els.map(e => e.dataset.file)") == [p.name for p in sample_posters()[:2]]

    # the example posters: clicking one predicts it, on top of the earlier results
    examples = page.locator("#examples .example")
    expect(examples).to_have_count(len(sample_posters()))
    examples.last.click()
    expect(cards).to_have_count(3, timeout=30_000)
    assert cards.first.get_attribute("data-file") == sample_posters()[-1].name

    first = cards.first
    expect(first.locator(".predicted")).not_to_be_empty()
    assert first.locator(".bars li").count() == 24
    assert first.locator(".bars li.hit").count() == 3  # the top-3 rule, highlighted
    assert first.get_attribute("data-file") == "scifi.jpg"  # the built-in model reads its title
    expect(first.locator(".read")).to_contain_text("read on the poster:")
    expect(first.locator(".words")).to_contain_text("RECALL")
    expect(page.locator("#text")).to_be_checked()
    hit = first.locator(".bars li.hit").first
    image_score = heatmap_of(page, first, hit)
    expect(first.locator(".explain-note")).to_contain_text("Heatmap for")
    expect(first.locator(".legend")).to_contain_text("low")
    # the words were fused in, so the bar is not the image's score: the note says what the heatmap
    # explains (rounded as the page's Math.round does)
    expect(first.locator(".heat-part")).to_have_text(f"The heatmap explains the image's part: {math.floor(100 * image_score + 0.5)}% "
                                                     f"from the image alone, {hit.locator('.value').inner_text()} with the words read.")
    page.mouse.move(0, 0)  # no hover highlight in the picture
    page.screenshot(path=str(shots / "desktop.png"), full_page=True)
    assert seen == {"external": [], "failed": []}, seen

    # a file that is not an image gets a clear message, not a broken page
    bad = tmp_path / "notes.jpg"
    bad.write_text("this is not a poster")
    page.set_input_files("#files", str(bad))
    expect(page.locator("#error")).to_contain_text("Not a readable image", timeout=30_000)
    assert (shots / "desktop.png").stat().st_size > 10_000


def test_sixty_posters_go_in_batches_and_stay_in_selection_order(server, browser, tmp_path):
    from playwright.sync_api import expect

    # named against their order, so a page that sorted by name would fail too
    files = []
    for i in range(60):
        files.append(tmp_path / f"poster{59 - i:02d}.jpg")
        Image.new("RGB", (48, 72), (4 * i, 255 - 4 * i, (37 * i) % 256)).save(files[-1], quality=85)
    page, seen = open_page(browser, server)
    sent = posted(page)
    page.evaluate("""() => { const p = document.querySelector('#progress'); window.progressSeen = [];
        new MutationObserver(() => window.progressSeen.push(p.textContent)).observe(p, {childList: true, subtree: true}); }""")
    page.set_input_files("#files", [str(f) for f in files])
    cards = page.locator("article.card")
    expect(cards).to_have_count(60, timeout=120_000)
    assert cards.evaluate_all("els => els.map(e => e.dataset.file)") == [f.name for f in files]
    expect(page.locator("#busy")).to_be_hidden()
    assert {"0 / 60", "32 / 60"} <= set(page.evaluate("window.progressSeen"))  # the busy indicator counted
    assert len(sent) == 2  # 32 + 28: the server's per-request cap, from /api/health
    assert page.locator("#error").is_hidden() and page.locator("article.card.failed").count() == 0

    with page.expect_download() as download:
        page.click("#csv")
    lines = Path(download.value.path()).read_text().splitlines()
    assert lines[0].startswith("path,predicted,error,text,") and len(lines[0].split(",")) == 4 + 24
    assert [line.split(",")[0] for line in lines[1:]] == [f.name for f in files]
    page.click("#clear")
    expect(cards).to_have_count(0)
    expect(page.locator("#csv")).to_be_disabled()
    assert seen == {"external": [], "failed": []}, seen


def test_the_page_checks_k_and_file_size_before_uploading(server, browser, tmp_path):
    from playwright.sync_api import expect

    page, seen = open_page(browser, server)
    sent = posted(page)
    assert page.get_attribute("#topk", "max") == "24"  # the model's genre count, from /api/health
    page.fill("#topk", "30")
    page.set_input_files("#files", str(sample_posters()[0]))
    expect(page.locator("#error")).to_contain_text("k must be a whole number from 1 to 24")
    expect(page.locator("#error")).not_to_contain_text("image")
    page.fill("#topk", "3")

    big = tmp_path / "big.jpg"
    big.write_bytes(b"\xff" * 20_000_000)
    page.set_input_files("#files", [str(big), str(sample_posters()[0])])
    expect(page.locator("#error")).to_contain_text("Too large: big.jpg: 20.0 MB, above the 10 MB cap", timeout=30_000)
    expect(page.locator("article.card")).to_have_count(2)
    assert page.locator("article.card").evaluate_all("els => els.map(e => e.dataset.file)") == ["big.jpg", sample_posters()[0].name]
    assert len(sent) == 1 and b"big.jpg" not in (sent[0].post_data_buffer or b"")  # only the small one went up
    expect(page.locator("#cap")).to_have_text("10 MB")


def test_phone_heatmap_is_scrolled_into_view(server, browser, shots):
    from playwright.sync_api import expect

    phone, seen = open_page(browser, server, viewport=PHONE, device_scale_factor=2)
    phone.set_input_files("#files", str(sample_posters()[-1]))
    card = phone.locator("article.card")
    expect(card.locator(".predicted")).not_to_be_empty(timeout=30_000)
    phone.screenshot(path=str(shots / "phone.png"), full_page=True)

    lowest = card.locator(".bars li").last
    lowest.click()  # scrolls down to the bar: the poster is now above the screen
    assert phone.evaluate("document.querySelector('article.card .frame').getBoundingClientRect().top") < 0
    expect(card.locator("img.heat")).to_be_visible(timeout=60_000)
    phone.wait_for_function("""() => { const r = document.querySelector('article.card img.heat').getBoundingClientRect();
        return r.height > 100 && r.top >= -1 && r.bottom <= innerHeight + 1 && r.left >= -1 && r.right <= innerWidth + 1; }""",
                            timeout=10_000)
    box = card.locator("img.heat").bounding_box()
    assert box["y"] >= -1 and box["y"] + box["height"] <= PHONE["height"] + 1, box  # (a sub-pixel off: scrolling rounds)

    heatmap_of(phone, card, card.locator(".bars li").nth(3))  # for the picture, a genre the poster does score
    expect(card.locator(".heat-part")).to_be_visible()  # text on: the words read are part of the bar's score
    phone.wait_for_timeout(800)  # the smooth scroll
    phone.screenshot(path=str(shots / "heatmap.png"))
    assert seen == {"external": [], "failed": []}, seen


def test_phone_layout_keeps_controls_with_their_labels(server, browser):
    phone, _ = open_page(browser, server, viewport=PHONE, is_mobile=True, has_touch=True)
    # nothing to drop on a phone: a button worded for it
    assert phone.locator(".pick .for-touch").inner_text() == "Choose posters"
    assert phone.locator(".for-drop").evaluate_all("els => els.every(e => !e.offsetParent)")
    box = phone.locator(".pick").bounding_box()
    assert box["height"] >= 36 and box["width"] >= 120, box  # a thumb-sized target
    gaps = phone.evaluate("""() => {
        const box = document.querySelector('#text').getBoundingClientRect(), words = document.createRange();
        words.selectNodeContents(document.querySelector('#text-switch'));
        words.setStartAfter(document.querySelector('#text'));
        const w = words.getBoundingClientRect(), k = document.querySelector('#topk').getBoundingClientRect();
        return {gap: w.left - box.right, rise: Math.abs((w.top + w.bottom) / 2 - (box.top + box.bottom) / 2), k: k.width, right: k.right};
    }""")
    assert 0 <= gaps["gap"] <= 12 and gaps["rise"] <= 6, gaps  # the checkbox beside its words, not far off
    assert gaps["k"] >= 56 and gaps["right"] <= PHONE["width"], gaps  # room for two digits and the spinner


def test_docs_render_offline(server, browser):
    from playwright.sync_api import expect

    context = browser.new_context()
    outside, failed = [], []

    def only_local(route):  # anything else is cut, as it would be on an offline machine
        if route.request.url.startswith((server, "data:", "blob:")):
            return route.continue_()
        outside.append(route.request.url)
        return route.abort()

    context.route("**/*", only_local)
    page = context.new_page()
    page.on("response", lambda r: failed.append(f"{r.status} {r.url}") if r.status >= 400 else None)
    page.goto(server + "/docs")
    ui = page.locator(".swagger-ui")
    expect(ui.locator(".opblock")).to_have_count(5, timeout=30_000)  # health, genres, samples, predict, explain
    expect(ui).to_contain_text("/api/predict")
    expect(ui).to_contain_text("/api/explain")
    assert context.request.get(server + "/favicon.ico").status == 200  # the tab's icon, no 404
    context.close()
    assert outside == [] and failed == [], (outside, failed)
