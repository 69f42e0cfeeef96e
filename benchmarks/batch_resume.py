"""Kill-and-resume check for batch jobs: 4 shards in parallel, one killed midway and resumed.

Builds ~2,000 images from the PIPED test and train sets (each also flipped and rotated),
trains a model on sample_data, runs `lista detect --shard I/4` as 4 processes, kills shard 0
after a few seconds, resumes it with --skip-existing, merges with `lista merge-scores`, and
checks that every image is scored exactly once and that the scores equal an unsharded run.

    python benchmarks/batch_resume.py [--work /tmp/lista-batch]
"""

from __future__ import annotations

import argparse
import csv
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
PIPED = ROOT.parent / "shared" / "data" / "piped"


def build_images(folder: Path) -> int:
    count = 0
    for source in sorted(PIPED.glob("*/*/*/*.png")):
        if "ground_truth" in source.parts:
            continue
        image = np.asarray(Image.open(source).convert("RGB"))
        kind = source.parts[-4] + "_" + source.parts[-2]
        for variant, array in (("a", image), ("b", image[:, ::-1]), ("c", np.rot90(image))):
            target = folder / kind / variant / source.name
            target.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(np.ascontiguousarray(array)).save(target)
            count += 1
    return count


def lista(*args: str, **kwargs) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "lista_cli.cli", *args], **kwargs)


def read_scores(path: Path) -> dict[str, str]:
    with open(path, newline="") as handle:
        rows = list(csv.DictReader(handle))
    images = [row["image"] for row in rows]
    assert len(images) == len(set(images)), f"{path}: an image is scored twice"
    return {row["image"]: row["score"] for row in rows}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, default=Path("/tmp/lista-batch"))
    parser.add_argument("--kill-after", type=float, default=8.0)
    args = parser.parse_args()
    shutil.rmtree(args.work, ignore_errors=True)
    images = args.work / "images"
    total = build_images(images)
    model = args.work / "model.pt"
    assert lista("train", str(ROOT / "sample_data" / "paper_BRG01"), "--out", str(model), "-q").wait() == 0

    out = args.work / "sharded"
    started = time.perf_counter()
    common = ["--threads", "1", "-q"]
    jobs = [lista("detect", str(model), str(images), "--out", str(out), "--shard", f"{i}/4", *common) for i in range(4)]
    time.sleep(args.kill_after)
    jobs[0].send_signal(signal.SIGKILL)
    codes = [job.wait() for job in jobs]
    partial = len(read_scores(out / "scores.shard-0-of-4.csv"))
    resume = lista("detect", str(model), str(images), "--out", str(out), "--shard", "0/4", "--skip-existing", *common)
    resume_code = resume.wait()
    merge_code = lista("merge-scores", str(out), "-q").wait()
    sharded_seconds = time.perf_counter() - started

    started = time.perf_counter()
    single_code = lista("detect", str(model), str(images), "--out", str(args.work / "single"), *common).wait()
    single_seconds = time.perf_counter() - started

    merged = read_scores(out / "scores.csv")
    from lista_cli.io.inputs import collect_inputs

    sharded_maps = {item.name: np.load(out / f"{item.name}_map.npy") for item in collect_inputs([str(images)]).images}
    same_maps = all(
        np.array_equal(array, np.load(args.work / "single" / f"{name}_map.npy")) for name, array in sharded_maps.items()
    )
    single = read_scores(args.work / "single" / "scores.csv")
    leftovers = list(out.rglob("*.tmp"))
    maps = sorted(out.rglob("*_map.npy"))
    print(f"images: {total}")
    print(f"shard exit codes: {codes} (shard 0 killed after {args.kill_after:.0f}s with {partial} rows written)")
    print(f"resume of shard 0: exit {resume_code}; merge: exit {merge_code}")
    print(f"merged rows: {len(merged)}; unsharded rows: {len(single)}; maps on disk: {len(maps)}")
    print(f"every image scored exactly once: {set(merged) == set(single) and len(merged) == total}")
    print(f"scores equal to the unsharded run: {merged == single}")
    print(f"maps identical to the unsharded run: {same_maps}")
    print(f"temporary files left behind: {len(leftovers)}")
    print(f"wall time: 4 shards + kill + resume + merge {sharded_seconds:.1f}s; unsharded {single_seconds:.1f}s")
    ok = merged == single and same_maps and len(merged) == total and not leftovers and single_code == 0
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
