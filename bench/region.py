"""Benchmark of the region methods on the lateral ventricles, side by side with two peers.

Data: the MICCAI 2012 training set (15 skull-stripped 1 mm T1 scans with a brain mask and
manual labels, see ../shared/data/README.md; the benchmark stops with a message when it is
absent). Truth: ``_glm`` 52 (left lateral ventricle) -> 4 and 51 (right) -> 43 through the shipped
``miccai2012-to-freesurfer`` map; the inferior horns (49/50) are separate labels there and do
not count as lateral ventricle.

Methods, all from the same automatic seeds (:func:`mriquant.segment._seeds.find_ventricle_seeds`,
found inside each method's timed call) and inside the same brain mask:

- ``region-growing``: mriquant's confidence-connected growing, default options.
- ``level-set``: mriquant's morphological Chan-Vese, default options (initialised by region growing).
- ``sitk-confidence``: SimpleITK's ``ConfidenceConnected`` with its default parameters
  (multiplier 2.5, 4 iterations, neighbourhood radius 1) on the skull-stripped image from the
  two seeds, then cut to the brain mask.
- ``threshold-cc``: a plain baseline: the mask's voxels below the lower three-class Otsu
  threshold, 6-connected components holding a seed.

The peers' regions are labelled like mriquant's (a component grown from one seed takes its
side; a component holding both is split at the midline plane).

Every method runs in a forked child process per scan: ``s`` is the wall time of the call alone
(no I/O), ``+RSS`` the child's peak resident memory minus its resident memory at the start (MB).
Dice and HD95 (mm) come from :func:`mriquant.evaluate.evaluate_labels` in the parent.

Usage::

    nice -n 10 python bench/region.py                 # 15 subjects, 4 methods (~5 min on 2 busy cores)
    nice -n 10 python bench/region.py --subjects 1000 1036 --methods region-growing level-set

The table is printed and written to ``bench/region_results/latest.md`` (raw numbers in ``latest.json``).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from _harness import MICCAI, results_dir, run_forked
from mriquant.core.image import Image, LabelImage
from mriquant.evaluate import apply_map, evaluate_labels, load_map
from mriquant.io import read_image, read_labels

RESULTS = results_dir("region_results")
SUBJECTS = (
    "1000",
    "1001",
    "1002",
    "1006",
    "1007",
    "1008",
    "1009",
    "1010",
    "1011",
    "1012",
    "1013",
    "1014",
    "1015",
    "1017",
    "1036",
)
METHODS = ("region-growing", "level-set", "sitk-confidence", "threshold-cc")
LEFT, RIGHT = 4, 43


@dataclass
class Case:
    """One scan: image, brain mask and truth (4 left, 43 right lateral ventricle, 0 elsewhere)."""

    name: str
    image: Image
    mask: LabelImage
    truth: LabelImage


# ---------------------------------------------------------------------------------------------------- methods


def _ours(name: str) -> Callable[[Case], np.ndarray]:
    def run(case: Case) -> np.ndarray:
        from mriquant.segment import get_segmenter

        seg = get_segmenter(name)().segment(case.image, case.mask)
        assert seg.dseg is not None
        return np.asarray(seg.dseg.array)

    return run


def _label_sides(case: Case, region: np.ndarray, seeds: Any) -> np.ndarray:
    """Label a region grown from the two automatic seeds as mriquant does (by seed, else by side)."""
    from mriquant.segment._seeds import seeds_to_voxels
    from mriquant.segment.region_growing import side_labels

    voxels = seeds_to_voxels(case.image, np.asarray(seeds.points))
    sides = seeds.midline.signed_distance(case.image.shape, case.image.affine)
    return side_labels(region, voxels, sides)


def _sitk_confidence(case: Case) -> np.ndarray:
    import SimpleITK as sitk

    from mriquant.segment._seeds import find_ventricle_seeds, seeds_to_voxels

    seeds = find_ventricle_seeds(case.image, case.mask)
    voxels = seeds_to_voxels(case.image, np.asarray(seeds.points))
    itk = sitk.GetImageFromArray(np.ascontiguousarray(case.image.array, dtype=np.float32))
    # GetImageFromArray reverses the axes: ITK index (x, y, z) = array index (k, j, i)
    seed_list = [(int(v[2]), int(v[1]), int(v[0])) for v in voxels]
    grown = sitk.GetArrayFromImage(sitk.ConfidenceConnected(itk, seedList=seed_list)) > 0
    return _label_sides(case, grown & (case.mask.array > 0), seeds)


def _threshold_cc(case: Case) -> np.ndarray:
    from mriquant.segment._seeds import find_ventricle_seeds, seeds_to_voxels
    from mriquant.segment.region_growing import seeded_components

    seeds = find_ventricle_seeds(case.image, case.mask)
    voxels = seeds_to_voxels(case.image, np.asarray(seeds.points))
    dark = (case.mask.array > 0) & (case.image.array < seeds.threshold)
    return _label_sides(case, seeded_components(dark, voxels), seeds)


RUNNERS: dict[str, Callable[[Case], np.ndarray]] = {
    "region-growing": _ours("region-growing"),
    "level-set": _ours("level-set"),
    "sitk-confidence": _sitk_confidence,
    "threshold-cc": _threshold_cc,
}


# ---------------------------------------------------------------------------------------------------- measuring


def measure(method: str, case: Case) -> dict[str, Any]:
    """Run ``method`` on ``case`` in a forked child; Dice, HD95, seconds and memory."""
    run = run_forked(RUNNERS[method], case, timeout=1800, post=lambda labels: labels.astype(np.int16), trim_heap=True,
                     error_chars=200)  # fmt: skip
    result: dict[str, Any] = (  # a failure is a row in the table rather than the end of the benchmark
        {"error": run.error}
        if run.error
        else {"seconds": run.seconds, "rss_delta_mb": run.rss_delta_mb, "labels": run.value}
    )
    row: dict[str, Any] = {"case": case.name, "method": method}
    if "labels" in result:
        pred = case.truth.with_array(result.pop("labels").astype(np.int32))
        for m in evaluate_labels(pred, case.truth, labels=[LEFT, RIGHT]):
            side = "L" if m.label == LEFT else "R"
            row[f"dice_{side}"] = m.dice
            row[f"hd95_{side}"] = m.hd95_mm
            row[f"vol_{side}"] = m.volume_pred_ml
            row[f"truth_{side}"] = m.volume_truth_ml
    return {**row, **result}


def load_case(subject: str, mapping: dict[int, int]) -> Case:
    """Read one MICCAI subject; truth keeps only the lateral ventricles (4, 43)."""
    image = read_image(MICCAI / f"{subject}_SS.nii.gz")
    mask = read_labels(MICCAI / f"{subject}_mask.nii.gz")
    mapped = apply_map(read_labels(MICCAI / f"{subject}_glm.nii.gz"), mapping)
    truth = mapped.with_array(np.where(np.isin(mapped.array, [LEFT, RIGHT]), mapped.array, 0).astype(np.int32))
    return Case(subject, image, mask, truth)


def seed_hits(case: Case) -> tuple[bool, bool]:
    """Whether the automatic seeds land in the true left and right lateral ventricles."""
    from mriquant.segment._seeds import find_ventricle_seeds, seeds_to_voxels

    seeds = find_ventricle_seeds(case.image, case.mask)
    left, right = seeds_to_voxels(case.image, np.asarray(seeds.points))
    return int(case.truth.array[tuple(left)]) == LEFT, int(case.truth.array[tuple(right)]) == RIGHT


# ---------------------------------------------------------------------------------------------------- report


def _stats(values: list[float | None]) -> str:
    found = [v for v in values if v is not None and math.isfinite(v)]
    return f"{np.mean(found):.3f} ± {np.std(found):.3f} (min {min(found):.2f})" if found else "-"


def summary_table(rows: list[dict[str, Any]], methods: list[str]) -> str:
    """Markdown table: mean ± sd Dice, median HD95 (mm), mean seconds, max +RSS (MB) per method."""
    lines = [
        "| method | Dice L | Dice R | HD95 L (mm) | HD95 R (mm) | s / scan | +RSS MB (max) | failed |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for method in methods:
        mine = [r for r in rows if r["method"] == method]
        ok = [r for r in mine if "error" not in r]
        hd = {s: [r.get(f"hd95_{s}") for r in ok] for s in "LR"}
        seconds = np.mean([r["seconds"] for r in ok]) if ok else float("nan")
        rss = max((r["rss_delta_mb"] for r in ok), default=float("nan"))
        lines.append(
            f"| {method} | {_stats([r.get('dice_L') for r in ok])} | {_stats([r.get('dice_R') for r in ok])} | "
            f"{_median(hd['L'])} | {_median(hd['R'])} | {seconds:.2f} | {rss:.0f} | {len(mine) - len(ok)} |"
        )
    return "\n".join(lines)


def _median(values: list[float | None]) -> str:
    found = [v for v in values if v is not None]
    return f"{np.median(found):.1f}" if found else "-"


def subject_table(rows: list[dict[str, Any]], methods: list[str], subjects: list[str]) -> str:
    """Markdown table of Dice L/R per subject and method."""
    lines = ["| subject | " + " | ".join(methods) + " |", "|---|" + "---|" * len(methods)]
    for s in subjects:
        cells = []
        for method in methods:
            r = next((x for x in rows if x["case"] == s and x["method"] == method), {})
            cells.append("error" if "error" in r else f"{r.get('dice_L', 0):.2f} / {r.get('dice_R', 0):.2f}")
        lines.append(f"| {s} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _versions() -> str:
    import scipy
    import SimpleITK as sitk
    import skimage

    import mriquant

    return (
        f"mriquant {mriquant.__version__}, numpy {np.__version__}, scipy {scipy.__version__}, "
        f"scikit-image {skimage.__version__}, SimpleITK {sitk.Version.VersionString()}, "
        f"Python {platform.python_version()}"
    )


def report(
    rows: list[dict[str, Any]], methods: list[str], subjects: list[str], hits: list[tuple[bool, bool]], wall: float
) -> str:
    """The markdown report: summary, seed placement, per-subject Dice, errors and conditions."""
    errors = [f"- {r['method']} on {r['case']}: {r['error']}" for r in rows if "error" in r]
    placed = sum(a for a, _ in hits) + sum(b for _, b in hits)
    return "\n".join(
        [
            "# Lateral ventricles: region methods vs peers (MICCAI 2012 training, 1 mm T1)",
            "",
            f"{len(subjects)} subjects; truth `_glm` 52 -> 4 (left), 51 -> 43 (right). Automatic seeds inside the "
            f"true ventricle: {placed} of {2 * len(subjects)}.",
            "",
            summary_table(rows, methods),
            "",
            "Dice: mean ± sd (min) over subjects; HD95: median over subjects (95th percentile of the pooled symmetric "
            "surface distances, mm); s: wall time of the call in a forked child (seed finding included); "
            "+RSS: peak resident memory of the child minus its memory at the start.",
            "",
            "## Dice per subject (left / right)",
            "",
            subject_table(rows, methods, subjects),
            "",
            *(["## Errors", "", *errors, ""] if errors else []),
            f"Run {time.strftime('%Y-%m-%d %H:%M')} in {wall / 60:.1f} min on {os.cpu_count()} CPUs shared with other "
            f"work (load average at the end {os.getloadavg()[0]:.1f}); {_versions()}.",
            "",
        ]
    )


# ---------------------------------------------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--subjects", nargs="+", default=list(SUBJECTS))
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=list(METHODS))
    parser.add_argument("--out", type=Path, default=RESULTS / "latest.md")
    args = parser.parse_args(argv)
    if not MICCAI.is_dir():
        print(f"MICCAI 2012 data not found at {MICCAI}; see ../shared/data/README.md", file=sys.stderr)
        return 2
    mapping = load_map("miccai2012-to-freesurfer")
    rows: list[dict[str, Any]] = []
    hits: list[tuple[bool, bool]] = []
    t0 = time.perf_counter()
    for subject in args.subjects:
        case = load_case(subject, mapping)
        hits.append(seed_hits(case))
        for method in args.methods:
            row = measure(method, case)
            rows.append(row)
            detail = (
                row.get("error")
                or f"Dice {row.get('dice_L', 0):.3f} / {row.get('dice_R', 0):.3f}, {row['seconds']:.1f} s"
            )
            print(f"{subject} {method:16s} {detail}", file=sys.stderr, flush=True)
    text = report(rows, args.methods, args.subjects, hits, time.perf_counter() - t0)
    print(text)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text, encoding="utf-8")
    args.out.with_suffix(".json").write_text(json.dumps(rows, indent=1, default=float) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
