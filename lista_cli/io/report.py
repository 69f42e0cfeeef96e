"""`lista report`: one self-contained HTML page for a detect output folder or an eval run.

The page opens from disk (no server, no network): its plots are inline SVG (matplotlib),
its gallery data inline JSON, and it links the heatmap and mask PNGs detect wrote beside it
instead of embedding them; the gallery shows one page of images at a time and lazy-loads
them, so a batch of thousands stays small. Needs the optional extra `lista-cli[report]`
(jinja2, matplotlib).
"""

from __future__ import annotations

import csv
import io
import os
from pathlib import Path
from typing import Any

import numpy as np

from .. import __version__
from ..errors import ListaError
from .imageio import atomic_write

PAGE_SIZE = 60  # gallery items per page


class ReportError(ListaError):
    """A folder a report cannot be made from, or the report extra missing (exit code 1)."""


def require_libraries():
    try:
        import jinja2
        import matplotlib
    except ImportError as exc:
        raise ReportError(
            f"HTML reports need the report extra ({exc.name} is missing): pip install 'lista-cli[report]'"
        ) from None
    matplotlib.use("Agg")
    return jinja2


def _svg(figure) -> str:
    """A matplotlib figure as an inline <svg> element (no XML header)."""
    import matplotlib.pyplot as plt

    buffer = io.StringIO()
    figure.savefig(buffer, format="svg", bbox_inches="tight")
    plt.close(figure)
    text = buffer.getvalue()
    return text[text.index("<svg") :]


def histogram_svg(scores: np.ndarray, threshold: float, labels: np.ndarray | None = None) -> str:
    """Histogram of image scores with the threshold marked (normal / defective apart when labelled)."""
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(figsize=(6.4, 2.6))
    finite = scores[np.isfinite(scores)]
    bins = np.histogram_bin_edges(np.r_[finite, threshold], bins=min(60, max(10, len(finite) // 4)))
    if labels is None:
        axes.hist(finite, bins=bins, color="#4c72b0", label="images")
    else:
        axes.hist(scores[~labels], bins=bins, color="#4c72b0", alpha=0.7, label="good")
        axes.hist(scores[labels], bins=bins, color="#dd8452", alpha=0.7, label="defective")
    axes.axvline(threshold, color="#c44e52", linestyle="--", label=f"threshold {threshold:.4g}")
    axes.set_xlabel("image score")
    axes.set_ylabel("images")
    axes.legend(frameon=False, fontsize=8)
    return _svg(figure)


def curves_svg(labels: np.ndarray, scores: np.ndarray, threshold: float) -> str:
    """Image-level ROC and precision-recall curves, the threshold's point marked on both."""
    import matplotlib.pyplot as plt

    order = np.argsort(-scores, kind="stable")
    ranked, hits = scores[order], labels[order]
    true_pos, false_pos = np.cumsum(hits), np.cumsum(~hits)
    last = np.r_[ranked[1:] != ranked[:-1], True]  # one point per distinct score
    tpr = np.r_[0.0, true_pos[last] / max(hits.sum(), 1)]
    fpr = np.r_[0.0, false_pos[last] / max((~hits).sum(), 1)]
    precision = true_pos[last] / np.maximum(true_pos[last] + false_pos[last], 1)
    at_threshold = scores >= threshold
    point_tpr = (at_threshold & labels).sum() / max(labels.sum(), 1)
    point_fpr = (at_threshold & ~labels).sum() / max((~labels).sum(), 1)
    point_precision = (at_threshold & labels).sum() / max(at_threshold.sum(), 1)
    figure, (roc, pr) = plt.subplots(1, 2, figsize=(8, 3.4))
    roc.plot(fpr, tpr, color="#4c72b0")
    roc.plot([0, 1], [0, 1], color="#999999", linewidth=0.8, linestyle=":")
    roc.plot([point_fpr], [point_tpr], "o", color="#c44e52", label="threshold")
    roc.set(xlabel="false-positive rate", ylabel="true-positive rate", title="ROC (images)")
    pr.plot(tpr[1:], precision, color="#4c72b0")
    pr.plot([point_tpr], [point_precision], "o", color="#c44e52", label="threshold")
    pr.set(xlabel="recall", ylabel="precision", title="precision-recall (images)", ylim=(0, 1.02))
    for axes in (roc, pr):
        axes.legend(frameon=False, fontsize=8)
    return _svg(figure)


def _render(name: str, **context: Any) -> str:
    jinja2 = require_libraries()
    environment = jinja2.Environment(
        loader=jinja2.PackageLoader("lista_cli.io", "templates"), autoescape=True, undefined=jinja2.StrictUndefined
    )
    return environment.get_template(name).render(version=__version__, **context)


def _read_csv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


def _link(target: str | Path, base: Path) -> str | None:
    """A relative link from `base` to `target` if the file exists, else None."""
    target = Path(target)
    if not target.is_file():
        return None
    return Path(os.path.relpath(target.resolve(), base.resolve())).as_posix()


def detect_report(out_dir: Path, page_size: int = PAGE_SIZE) -> Path:
    """Write `out_dir/report.html` from the scores, regions and failures files detect wrote."""
    out_dir = Path(out_dir)
    scores_file = out_dir / "scores.csv"
    if not scores_file.is_file():
        raise ReportError(f"{out_dir}: no scores.csv (run lista detect --out {out_dir} first, or merge-scores)")
    rows = _read_csv(scores_file)
    if not rows or "normalized_score" not in rows[0]:
        raise ReportError(f"{scores_file}: no scored images")
    regions: dict[str, list[dict[str, str]]] = {}
    if (out_dir / "regions.csv").is_file():
        for region in _read_csv(out_dir / "regions.csv"):
            regions.setdefault(region["image"], []).append(region)
    failures = _read_csv(out_dir / "failures.csv") if (out_dir / "failures.csv").is_file() else []
    scores = np.array([float(r["score"]) for r in rows])
    normalized = np.array([float(r["normalized_score"]) for r in rows])
    usable = normalized > 0
    threshold = float(np.median(scores[usable] / normalized[usable])) if usable.any() else float("nan")
    items = []
    for row in sorted(rows, key=lambda r: -float(r["score"])):
        items.append(
            {
                "image": row["image"],
                "source": _link(row["image"], out_dir),
                "heatmap": row["heatmap"],
                "mask": row["mask"],
                "score": float(row["score"]),
                "normalized": float(row["normalized_score"]),
                "anomalous": row["anomalous"] == "True",
                "regions": [
                    {key: region[key] for key in ("x", "y", "width", "height", "area", "peak")}
                    for region in regions.get(row["image"], [])
                ],
            }
        )
    anomalous = sum(item["anomalous"] for item in items)
    html = _render(
        "detect.html.j2",
        title=f"lista report: {out_dir.name or out_dir}",
        folder=str(out_dir),
        images=len(items),
        anomalous=anomalous,
        region_count=sum(len(item["regions"]) for item in items),
        threshold=threshold,
        failures=failures,
        histogram=histogram_svg(scores, threshold),
        items=items,
        page_size=page_size,
    )
    path = out_dir / "report.html"
    atomic_write(path, lambda tmp: tmp.write_text(html, encoding="utf-8"))
    return path


def eval_report(report: dict[str, Any], labels: np.ndarray, scores: np.ndarray, path: Path) -> Path:
    """Write an eval report: summary, histogram, ROC and precision-recall curves, per-kind table."""
    from ..detection.evaluation.evaluate import EVAL_COLUMNS as columns

    table = [(kind, metrics) for kind, metrics in report["kinds"].items()] + [("all", report)]
    html = _render(
        "eval.html.j2",
        title=f"lista eval: {Path(report['dataset']).name}",
        report=report,
        columns=columns,
        table=table,
        histogram=histogram_svg(scores, report["threshold"], labels),
        curves=curves_svg(labels, scores, report["threshold"]),
    )
    path = Path(path)
    atomic_write(path, lambda tmp: tmp.write_text(html, encoding="utf-8"))
    return path
