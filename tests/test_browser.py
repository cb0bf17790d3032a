"""The search page and report.html in a real headless browser (Debian's chromium driven by Playwright),
against `tandem serve` started as a user starts it, on a tiny run whose catalogue has PNG and JPEG photos.

The browser tests skip when /usr/bin/chromium or the playwright package is absent (install: `apt-get install
chromium`); the photo endpoint's checks need no browser. Screenshots go to /tmp/tandem-search.png (results),
/tmp/tandem-search-similar.png and /tmp/tandem-report.png, for a person to look at.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import httpx
import pandas as pd
import pytest
import yaml
from conftest import TINY_VISION
from PIL import Image

from tandem.data.synth import make_dataset
from tandem.serve import read_events

CHROMIUM = "/usr/bin/chromium"
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
        "--disable-sync"]  # fmt: skip
TANDEM = shutil.which("tandem", path=str(Path(sys.executable).parent)) or "tandem"
ENV = os.environ | {"HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false", "GX_ANALYTICS_ENABLED": "false"}
MARKUP_TITLE = 'blue <img src=x onerror="document.title=1"> mug 1'  # must show as text
JPEG_ITEM, NO_PHOTO_ITEM, MARKUP_ITEM = "it2", "it0", "it1"  # synth: item i has i % 3 images


@pytest.fixture(scope="module")
def chromium():
    """Playwright's sync API for Debian's chromium; skips (before any run is built) when either is absent."""
    if not Path(CHROMIUM).is_file():
        pytest.skip(f"no {CHROMIUM}: install Debian's chromium (apt-get install chromium) for the browser tests")
    sync_api = pytest.importorskip("playwright.sync_api", reason="the playwright package is not installed")
    return sync_api.sync_playwright


@pytest.fixture(scope="module")
def built(tmp_path_factory, tiny_encoder_dir):
    """A tiny promoted run over a catalogue with PNG photos, one JPEG, items without photos and a title with markup."""
    data = tmp_path_factory.mktemp("data")
    logs, catalog = make_dataset(data, n_items=48, n_users=80, image_size=64)
    items = pd.read_csv(catalog, keep_default_na=False)
    Image.open(data / "images" / "2_0.png").convert("RGB").save(data / "images" / "2_0.jpg", quality=90)
    items.loc[items["item_id"] == JPEG_ITEM, "images"] = "images/2_0.jpg|images/2_1.png"
    items.loc[items["item_id"] == MARKUP_ITEM, "title"] = MARKUP_TITLE
    items.to_csv(catalog, index=False)
    recipe = {  # a tiny model: the text encoder of conftest, a 1-layer vision tower, 3 training steps
        "model": {"item_encoder": tiny_encoder_dir, "query_layers": 1, **TINY_VISION},
        "train": {"epochs": 1, "max_steps": 3, "batch_size": 16, "lr_item": 1e-3, "lr_query": 1e-3},
        "eval": {"batch_size": 32},
    }
    (data / "recipe.yaml").write_text(yaml.safe_dump(recipe))
    workdir = tmp_path_factory.mktemp("work")
    # in a subprocess, as a user runs it: Milvus Lite lets one process at a time open milvus.db, and serve needs it
    cmd = ["run", "--logs", logs, "--catalog", catalog, "--workdir", workdir, "--config", data / "recipe.yaml"]
    done = subprocess.run([TANDEM, *map(str, cmd)], env=ENV, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    (run_dir,) = (workdir / "runs").iterdir()
    report = json.loads((run_dir / "report.json").read_text())
    assert report["report_files"]["html"] == str(run_dir / "report.html")
    assert f"report: {run_dir / 'report.md'}" in done.stdout
    return SimpleNamespace(workdir=workdir, run_dir=run_dir)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server(built, tmp_path_factory):
    """`tandem serve` in a subprocess, as a user starts it; stopped with Ctrl-C (SIGINT), which flushes the events."""
    port = _free_port()
    cmd = [TANDEM, "serve", "--workdir", str(built.workdir), "--port", str(port)]
    output = tmp_path_factory.mktemp("serve") / "output.log"  # a file, not a pipe that could fill up and block
    log = output.open("w")
    process = subprocess.Popen(cmd, env=ENV, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 180
    try:
        while True:
            if process.poll() is not None:
                pytest.fail(f"tandem serve exited with {process.returncode}:\n{output.read_text()[-3000:]}")
            try:
                if httpx.get(f"{url}/healthz", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                pytest.fail("tandem serve did not answer /healthz within 180 s")
            time.sleep(0.5)
        yield SimpleNamespace(url=url, process=process)
    finally:
        stop(process)
        log.close()


def stop(process: subprocess.Popen) -> None:
    if process.poll() is None:
        process.send_signal(signal.SIGINT)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def test_photos_come_only_from_the_catalogue(server, built):
    get = lambda path: httpx.get(server.url + path, timeout=30)  # noqa: E731
    png = get("/items/it4/image")  # it4 has one PNG
    assert png.status_code == 200 and png.headers["content-type"] == "image/png"
    catalog = pd.read_parquet(built.run_dir / "data" / "catalog.parquet").set_index("item_id")
    assert png.content == Path(catalog.at["it4", "images"][0]).read_bytes()
    jpeg = get(f"/items/{JPEG_ITEM}/image")  # the first of its images
    assert jpeg.status_code == 200 and jpeg.headers["content-type"] == "image/jpeg" and jpeg.content[:2] == b"\xff\xd8"
    assert get(f"/items/{NO_PHOTO_ITEM}/image").status_code == 404
    assert get("/items/no-such-item/image").status_code == 404
    for probe in ("/items/..%2F..%2Fetc%2Fpasswd/image", "/items/%2Fetc%2Fpasswd/image", "/items/../../etc/passwd"):
        answer = get(probe)
        assert answer.status_code == 404 and b"root:" not in answer.content, probe
    page = get("/")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert "<script" in page.text and "http://" not in page.text and "https://" not in page.text  # no CDN


def test_search_page_shows_photos_and_similar_items_and_logs_the_click(chromium, server, built):
    with chromium() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            requests: list[str] = []
            page.on("request", lambda r: requests.append(r.url))
            page.goto(server.url + "/")
            page.wait_for_function("document.getElementById('health').textContent.startsWith('live tandem_')")
            page.select_option("#k", "48")
            page.fill("#q", "blue mug")
            page.press("#q", "Enter")
            page.wait_for_selector("#results .card")
            cards = page.locator("#results .card")
            assert cards.count() == 48  # k=48: the whole catalogue, with and without photos
            page.wait_for_function(
                "[...document.querySelectorAll('#results img')].every(i => i.complete)"
                " && document.querySelectorAll('#results .placeholder').length > 0"
            )
            widths = page.eval_on_selector_all("#results img", "imgs => imgs.map(i => i.naturalWidth)")
            assert len(widths) == 32 and all(w == 64 for w in widths)  # 32 of 48 items have photos, 64 px
            assert page.locator("#results .placeholder").count() == 16
            titles = page.eval_on_selector_all("#results .title", "ts => ts.map(t => t.textContent)")
            assert MARKUP_TITLE in titles and page.title() == "tandem search"  # shown as text, never run
            first = cards.first.get_attribute("data-item-id")
            meta = cards.first.locator(".meta").text_content()
            assert meta.startswith("#1 · score ") and meta.endswith(first)
            page.screenshot(path="/tmp/tandem-search.png")
            with page.expect_response(lambda r: r.url.endswith("/click")) as clicked:
                cards.first.click()
            assert clicked.value.status == 200 and clicked.value.json()["item_id"] == first
            page.wait_for_selector("#similar .card")
            assert not page.locator("#similar-section").is_hidden()
            similar = page.eval_on_selector_all("#similar .card", "cs => cs.map(c => c.dataset.itemId)")
            assert similar and first not in similar  # the viewed item is not its own neighbour
            page.wait_for_function("[...document.querySelectorAll('#similar img')].every(i => i.complete)")
            assert "Click logged" in page.text_content("#status")
            page.locator("#similar-title").scroll_into_view_if_needed()
            page.screenshot(path="/tmp/tandem-search-similar.png")
            assert all(r.startswith(server.url) for r in requests), "the page fetched something from elsewhere"
        finally:
            browser.close()
    stop(server.process)  # flushes the event log: the click is in the next run's behaviour log
    events = read_events(built.workdir)
    click = events[events["event"] == "click"]
    assert click["item_id"].tolist() == [first] and click["query"].tolist() == ["blue mug"]


def test_report_html_opens_offline_with_its_plot(chromium, built):
    report = built.run_dir / "report.html"
    with chromium() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        try:
            page = browser.new_page(viewport={"width": 1200, "height": 900})
            requests: list[str] = []
            page.on("request", lambda r: requests.append(r.url))
            page.goto(report.as_uri())
            plot = page.locator("#recall-plot")
            assert plot.is_visible()
            assert page.evaluate("document.getElementById('recall-plot').naturalWidth") > 0
            rows = page.eval_on_selector_all("#metrics tbody tr td:first-child", "tds => tds.map(t => t.textContent)")
            assert rows[0] == "model" and {"untrained", "popularity"} <= set(rows)
            cell = page.text_content("#metrics tbody tr:first-child td:nth-child(2)")
            assert cell.count("[") == 1 and cell.count(",") == 1  # mean [low, high]
            assert page.text_content("#decision") == "promote"
            docs = page.get_attribute("a", "href")
            assert (report.parent / docs).is_file()  # the Data Docs link resolves from the report's folder
            page.screenshot(path="/tmp/tandem-report.png", full_page=True)
            assert all(r.startswith("file://") or r.startswith("data:") for r in requests), requests
        finally:
            browser.close()
