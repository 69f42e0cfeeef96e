"""How big a detect report for a large batch is and how fast Chromium opens it.

Builds a detect output folder of N images (small real PNG outputs, synthetic scores and
regions), writes report.html with `lista report`'s code, then opens it in headless Chromium
(Playwright, Debian's /usr/bin/chromium) and reports the file size and the time until the
page's load event with the first gallery page drawn.

    python benchmarks/report_size.py --images 2000
"""

from __future__ import annotations

import argparse
import csv
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

from lista_cli.io.batch import REGION_FILE_COLUMNS, SCORE_COLUMNS
from lista_cli.io.report import detect_report


def build(out: Path, count: int, seed: int = 0) -> None:
    rng = np.random.default_rng(seed)
    heatmap = Image.fromarray(rng.integers(0, 255, (128, 128, 3), dtype=np.uint8))
    mask = Image.fromarray(np.zeros((128, 128), np.uint8))
    with open(out / "scores.csv", "w", newline="") as scores, open(out / "regions.csv", "w", newline="") as regions:
        score_rows, region_rows = csv.writer(scores), csv.writer(regions)
        score_rows.writerow(SCORE_COLUMNS)
        region_rows.writerow(REGION_FILE_COLUMNS)
        for index in range(count):
            name = f"line{index % 10}/img{index:05d}"
            (out / name).parent.mkdir(parents=True, exist_ok=True)
            heatmap.save(out / f"{name}_heatmap.png")
            mask.save(out / f"{name}_mask.png")
            score = float(rng.gamma(4.0, 0.5))
            anomalous = score >= 3.0
            score_rows.writerow(
                [
                    f"/line/{name}.png",
                    score,
                    score / 3.0,
                    anomalous,
                    f"{name}_heatmap.png",
                    f"{name}_mask.png",
                    f"{name}_map.npy",
                ]
            )
            for region in range(int(anomalous) * int(rng.integers(1, 4))):
                region_rows.writerow(
                    [f"/line/{name}.png", region + 1, 10, 20, 5, 7, 30, 12.5, 23.1, score, score * 0.8]
                )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=2000)
    args = parser.parse_args()
    from playwright.sync_api import sync_playwright

    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp)
        build(out, args.images)
        started = time.perf_counter()
        page_path = detect_report(out)
        written = time.perf_counter() - started
        size = page_path.stat().st_size
        with sync_playwright() as manager:
            browser = manager.chromium.launch(
                executable_path=chromium, args=["--no-sandbox", "--disable-gpu", "--disable-background-networking"]
            )
            page = browser.new_page()
            started = time.perf_counter()
            page.goto(page_path.as_uri())
            page.wait_for_selector("article.item")
            opened = time.perf_counter() - started
            items = page.locator("article.item").count()
            browser.close()
    print("| images | report.html | written in | opened in Chromium | gallery items on page 1 |")
    print("|---|---|---|---|---|")
    print(f"| {args.images} | {size / 1e6:.2f} MB | {written:.2f} s | {opened:.2f} s | {items} |")


if __name__ == "__main__":
    main()
