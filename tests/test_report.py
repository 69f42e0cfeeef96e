"""HTML reports: the page a detect run and an eval run write, opened in headless Chromium."""

import csv
import json
import shutil

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from lista_cli.cli import app

from .conftest import texture

runner = CliRunner()
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
FLAGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
]


@pytest.fixture(scope="module")
def batch(tmp_path_factory, tiny_trained):
    """A trained model, its MVTec folder and a detect run over 23 images (3 of them bad)."""
    pytest.importorskip("jinja2")
    root = tmp_path_factory.mktemp("report")
    rng = np.random.default_rng(4)
    model, data = tiny_trained
    images = root / "images"
    images.mkdir()
    for i in range(20):
        picture = texture(rng, 37, 45)
        if i % 4 == 0:
            picture[10:20, 12:22] = (230, 30, 30)  # a defect
        Image.fromarray(picture).save(images / f"img{i:02d}.png")
    for i in range(3):
        (images / f"bad{i}.png").write_bytes(b"not an image <script>alert(1)</script>")
    out = root / "out"
    result = runner.invoke(app, ["detect", str(model), str(images), "--out", str(out), "--report", "-q"])
    assert result.exit_code == 3, result.output  # the bad files failed, the rest were scored
    return model, data, out


def _page(browser_path, url):
    """(page, browser, console errors) for a file URL in headless Chromium."""
    sync_api = pytest.importorskip("playwright.sync_api")
    errors = []
    manager = sync_api.sync_playwright().start()
    browser = manager.chromium.launch(executable_path=browser_path, args=FLAGS)
    page = browser.new_page(viewport={"width": 1200, "height": 900})
    page.on("console", lambda message: errors.append(message.text) if message.type == "error" else None)
    page.on("pageerror", lambda error: errors.append(str(error)))
    page.goto(url)
    page.wait_for_load_state("load")
    return page, (browser, manager), errors


def _close(handles):
    browser, manager = handles
    browser.close()
    manager.stop()


def test_detect_report_is_self_contained_and_complete(batch):
    _, _, out = batch
    html = (out / "report.html").read_text()
    rows = list(csv.DictReader(open(out / "scores.csv")))
    assert len(rows) == 20
    for fetch in ('src="http', "src='http", 'href="http', "url(http", "<link", "import("):  # nothing from a network
        assert fetch not in html
    assert "<script>alert(1)</script>" not in html  # a failure message is escaped, not run
    items = json.loads(html.split('<script type="application/json" id="items">')[1].split("</script>")[0])
    assert [i["image"] for i in items] == [r["image"] for r in sorted(rows, key=lambda r: -float(r["score"]))]
    assert all((out / i["heatmap"]).is_file() and (out / i["mask"]).is_file() for i in items)


@pytest.mark.skipif(CHROMIUM is None, reason="Chromium is not installed (.ci/install installs it)")
def test_detect_report_opens_in_chromium_without_errors(batch, tmp_path):
    _, _, out = batch
    page, handles, errors = _page(CHROMIUM, (out / "report.html").as_uri())
    try:
        assert page.locator("article.item").count() == 20
        assert page.locator("#count-failed").inner_text() == "3"
        assert page.locator("svg").count() >= 1  # the histogram
        page.locator("article.item img").first.scroll_into_view_if_needed()
        page.wait_for_function("document.querySelector('article.item img').complete")
        loaded = page.evaluate(
            "[...document.querySelectorAll('article.item img')].slice(0, 3).map(i => i.naturalWidth)"
        )
        assert loaded == [45, 45, 45]  # source, heatmap, mask of the top image, at their own width
        shot = tmp_path / "report.png"
        page.screenshot(path=str(shot))
        picture = np.asarray(Image.open(shot).convert("RGB")).astype(float)
        assert picture.shape == (900, 1200, 3) and picture.std() > 10  # rendered content, not a blank page
    finally:
        _close(handles)
    assert errors == []


@pytest.mark.skipif(CHROMIUM is None, reason="Chromium is not installed (.ci/install installs it)")
def test_gallery_pages(batch):
    from lista_cli.io.report import detect_report

    _, _, out = batch
    detect_report(out, page_size=8)
    page, handles, errors = _page(CHROMIUM, (out / "report.html").as_uri())
    try:
        counts = [page.locator("article.item").count()]
        for _ in range(2):
            page.click("#next")
            counts.append(page.locator("article.item").count())
        assert counts == [8, 8, 4] and page.locator("#next").is_disabled()
        assert page.locator("#page").inner_text() == "page 3 of 3"
    finally:
        _close(handles)
        detect_report(out)
    assert errors == []


def test_report_command_and_its_errors(batch, tmp_path):
    _, _, out = batch
    (out / "report.html").unlink()
    result = runner.invoke(app, ["report", str(out)])
    assert result.exit_code == 0 and (out / "report.html").is_file()
    result = runner.invoke(app, ["report", str(tmp_path)])
    assert result.exit_code == 1 and "no scores.csv" in result.output and "Traceback" not in result.output


@pytest.mark.skipif(CHROMIUM is None, reason="Chromium is not installed (.ci/install installs it)")
def test_eval_report_has_curves_and_the_kind_table(batch, tmp_path):
    model, data, _ = batch
    page_path = tmp_path / "eval.html"
    result = runner.invoke(app, ["eval", str(model), str(data), "--report", str(page_path), "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert len(report["image_scores"]) == 4
    page, handles, errors = _page(CHROMIUM, page_path.as_uri())
    try:
        assert page.locator("#kinds tr").count() == 1 + len(report["kinds"]) + 1  # header, kinds, all
        assert page.locator("svg").count() == 2  # histogram, ROC and PR side by side
    finally:
        _close(handles)
    assert errors == []
