"""End to end: the real server on a loopback port, the page driven in headless Chromium.

Set POSTERGENRE_SCREENSHOTS=DIR to keep the desktop and phone screenshots (docs/screenshots/).
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from postergenre.onnx_engine import sample_posters

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"


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


def test_page_upload_shows_genres_and_heatmap(server, tmp_path):
    from playwright.sync_api import expect, sync_playwright

    assert Path(CHROMIUM).exists(), "Chromium is missing: scripts/setup.sh installs Debian's chromium"
    shots = Path(os.environ.get("POSTERGENRE_SCREENSHOTS", tmp_path))
    shots.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox", "--disable-gpu"])
        page = browser.new_page(viewport={"width": 1280, "height": 900})
        external = []
        page.on("request", lambda r: external.append(r.url) if not r.url.startswith(server) and not r.url.startswith("blob:") else None)
        page.goto(server + "/")
        expect(page.locator("#status")).to_contain_text("ready", timeout=90_000)
        page.set_input_files("#files", [str(p) for p in sample_posters()[:2]])
        cards = page.locator("article.card")
        expect(cards).to_have_count(2, timeout=30_000)
        first = cards.first
        expect(first.locator(".predicted")).not_to_be_empty()
        assert first.locator(".bars li").count() == 24
        assert first.locator(".bars li.hit").count() == 3  # the top-3 rule, highlighted
        first.locator(".bars li.hit").first.click()
        expect(first.locator("img.heat")).to_be_visible(timeout=60_000)
        expect(first.locator(".explain-note")).to_contain_text("Heatmap for")
        page.screenshot(path=str(shots / "desktop.png"), full_page=True)

        # a file that is not an image gets a clear message, not a broken page
        bad = tmp_path / "notes.jpg"
        bad.write_text("this is not a poster")
        page.set_input_files("#files", str(bad))
        expect(page.locator("#error")).to_contain_text("Not a readable image", timeout=30_000)

        phone = browser.new_page(viewport={"width": 390, "height": 844}, device_scale_factor=2)
        phone.goto(server + "/")
        expect(phone.locator("#status")).to_contain_text("ready", timeout=30_000)
        phone.set_input_files("#files", str(sample_posters()[2]))
        expect(phone.locator("article.card .predicted")).not_to_be_empty(timeout=30_000)
        phone.screenshot(path=str(shots / "phone.png"), full_page=True)
        browser.close()
    assert external == [], f"the page fetched outside resources: {external}"
    assert (shots / "desktop.png").stat().st_size > 10_000
