"""Benchmark of the classical tissue methods against FSL FAST, ANTs Atropos and scikit-learn.

Data (see ../shared/data/README.md; the benchmark stops with a message when it is absent):

- MICCAI 2012 training set, 15 skull-stripped 1 mm T1 scans with a brain mask and a 1 CSF / 2 GM /
  3 WM map derived from manual labels (sulcal CSF is mostly unlabelled there, so GM and WM Dice
  are the measures; CSF Dice mostly measures the ventricles). FSL FAST's output ships with the
  data (``NNNN_tissues``); ANTs Atropos (``ants.atropos``: k-means init, 3 classes, MRF
  [0.2, 1x1x1], 5 iterations, on intensities truncated to the in-mask 0.1-99.9 percentiles as
  ANTs' pipelines do: untruncated, its k-means init fails on scans with a few very bright voxels)
  and scikit-learn's GaussianMixture (3 components, full EM on the in-mask intensities, classes
  sorted by mean) run here, in the same mask.
- BrainWeb: T1, T2 and PD scans simulated from two crisp anatomical models by
  :func:`mriquant.simulate.brainweb.simulate` (1 mm, Rician noise, multiplicative bias), segmented
  inside the true brain mask.

Every method runs in a forked child process: ``seconds`` is the wall time of the call alone
(no I/O, no imports), ``+RSS`` is the child's peak resident memory minus its resident memory
at the start (what the method itself needed, in MB). Timings are on whatever else the
machine is doing; use ``nice`` and expect noise.

Usage::

    nice -n 10 python bench/tissue.py            # full: 15 subjects + BrainWeb grid (~20 min on 2 cores)
    nice -n 10 python bench/tissue.py --quick    # 3 subjects + a small BrainWeb grid
    python bench/tissue.py --methods mrf "mrf:beta=0.3" --no-brainweb   # variants, name:key=value,...

The table is printed and written to ``bench/tissue_results/latest.md`` (raw numbers in ``latest.json``).
"""

from __future__ import annotations

import argparse
import ast
import dataclasses
import json
import os
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from _harness import BRAINWEB, DATA, MICCAI, results_dir, run_forked
from mriquant.core.image import Image, LabelImage
from mriquant.evaluate import dice
from mriquant.io import read_image, read_labels

RESULTS = results_dir("tissue_results")

OURS = ("otsu", "kmeans", "fcm", "gmm", "mrf", "mrf:bias=False")
PEERS = ("atropos", "sklearn-gmm")
QUICK_SUBJECTS = ("1000", "1001", "1002")
ANATOMIES = ("subject04", "subject05")
#: (contrast, noise, bias) conditions: the full grid for T1 and mrf; the rest keeps the run short.
FULL_GRID = [(c, n, b) for c in ("T1", "T2", "PD") for n in (0.0, 0.03, 0.09) for b in (0.0, 0.2, 0.4)]
STANDARD = [("T1", 0.03, 0.2), ("T2", 0.03, 0.2), ("PD", 0.03, 0.2)]
QUICK_GRID = [*STANDARD, ("T1", 0.09, 0.4)]
#: Tissue order of classes sorted by mean intensity, per contrast (for the peers).
SORTED_TISSUE = {"T1": (1, 2, 3), "T2": (3, 2, 1), "PD": (3, 2, 1)}


@dataclass
class Case:
    """One scan to segment: image, mask, truth (1 CSF, 2 GM, 3 WM) and the contrast."""

    name: str
    image: Image
    mask: LabelImage
    truth: np.ndarray
    contrast: str
    extra: dict[str, Any] = field(default_factory=dict)


# ---------------------------------------------------------------------------------------------------- runners


def parse_method(spec: str) -> tuple[str, dict[str, Any]]:
    """``"mrf:beta=0.3,priors='none'"`` -> ("mrf", {"beta": 0.3, "priors": "none"})."""
    name, _, rest = spec.partition(":")
    options: dict[str, Any] = {}
    for item in filter(None, rest.split(",")):
        key, _, value = item.partition("=")
        try:
            options[key] = ast.literal_eval(value)
        except (ValueError, SyntaxError):
            options[key] = value
    return name, options


def run_ours(spec: str, case: Case) -> np.ndarray:
    from mriquant.segment import get_segmenter

    name, options = parse_method(spec)
    cls = get_segmenter(name)
    options.setdefault("contrast", case.contrast)
    seg = cls(cls.options_type(**options)).segment(case.image, case.mask)
    assert seg.tissue is not None
    return np.asarray(seg.tissue.array)


def run_atropos(spec: str, case: Case) -> np.ndarray:
    import ants

    from mriquant.core.ants_bridge import to_ants

    _, options = parse_method(spec)
    array = case.image.array.astype(np.float32)
    if options.get("truncate", True):  # as ANTs' own pipelines do before Atropos (outliers wreck its k-means init)
        lo, hi = np.percentile(array[case.mask.array > 0], (0.1, 99.9))
        array = np.clip(array, lo, hi)
    img = to_ants(case.image.with_array(array))
    mask = to_ants(case.mask.with_array((case.mask.array > 0).astype(np.float32))).clone("unsigned int")
    beta = float(options.get("beta", 0.2))
    out = ants.atropos(a=img, x=mask, i="Kmeans[3]", m=f"[{beta},1x1x1]", c=str(options.get("c", "[5,0]")))
    seg = np.rint(out["segmentation"].numpy()).astype(np.int32)  # classes 1..3 by increasing k-means mean
    lut = np.array((0, *SORTED_TISSUE[case.contrast]))
    return np.asarray(lut[np.clip(seg, 0, 3)])


def run_sklearn(spec: str, case: Case) -> np.ndarray:
    from sklearn.mixture import GaussianMixture

    inside = case.mask.array > 0
    values = case.image.array[inside].astype(np.float64)[:, None]
    gm = GaussianMixture(3, random_state=0, max_iter=300).fit(values)
    rank = np.argsort(np.argsort(gm.means_[:, 0]))  # component -> sorted position
    lut = np.asarray(SORTED_TISSUE[case.contrast])[rank]
    out = np.zeros(case.mask.shape, np.int32)
    out[inside] = lut[gm.predict(values)]
    return out


def runner(spec: str) -> Callable[[str, Case], np.ndarray]:
    name = parse_method(spec)[0]
    return {"atropos": run_atropos, "sklearn-gmm": run_sklearn}.get(name, run_ours)


# ---------------------------------------------------------------------------------------------------- measuring


def scores(labels: np.ndarray, truth: np.ndarray) -> dict[str, float]:
    return {t: dice(labels == k, truth == k) for k, t in ((1, "CSF"), (2, "GM"), (3, "WM"))}


def measure(spec: str, case: Case) -> dict[str, Any]:
    """Run ``spec`` on ``case`` in a forked child; Dice, seconds and memory."""
    run = run_forked(runner(spec), spec, case, post=lambda labels: scores(labels, case.truth), error_chars=200)
    result: dict[str, Any] = (  # a failure is a row in the table rather than the end of the benchmark
        {"error": run.error} if run.error else {"seconds": run.seconds, "rss_delta_mb": run.rss_delta_mb, **run.value}
    )
    return {"case": case.name, "method": spec, **case.extra, **result}


# ---------------------------------------------------------------------------------------------------- data


def miccai_cases(subjects: list[str]) -> list[Case]:
    import nibabel as nib

    out = []
    for s in subjects:
        truth = np.asarray(nib.load(str(MICCAI / f"{s}_classified.nii.gz")).dataobj).astype(np.int32)
        fast = np.asarray(nib.load(str(MICCAI / f"{s}_tissues.nii.gz")).dataobj).astype(np.int32)
        image = read_image(MICCAI / f"{s}_SS.nii.gz")
        mask = read_labels(MICCAI / f"{s}_mask.nii.gz")
        out.append(Case(s, image, mask, truth, "T1", {"fast": fast}))
    return out


def with_n4(case: Case) -> Case:
    """``case`` with its image N4-corrected inside its non-zero region (the product's ``segment --skullstripped``)."""
    from mriquant.preprocess.bias import n4

    nonzero = LabelImage((case.image.array != 0).astype(np.int32), case.image.affine.copy())
    return dataclasses.replace(case, image=n4(case.image, mask=nonzero).corrected)


def brainweb_cases(anatomies: tuple[str, ...], grid: list[tuple[str, float, float]]) -> Any:
    from mriquant.simulate.brainweb import simulate

    for anatomy in anatomies:
        labels = read_labels(BRAINWEB / f"{anatomy}_crisp_v.mnc.gz")
        for contrast, noise, bias in grid:
            scan = simulate(labels, contrast=contrast, noise=noise, bias=bias, seed=1)
            name = f"{anatomy} {contrast} n{noise * 100:g}% b{bias * 100:g}%"
            extra = {"anatomy": anatomy, "contrast": contrast, "noise": noise, "bias": bias}
            yield Case(name, scan.image, scan.brain_mask, np.asarray(scan.tissue.array), contrast, extra)


# ---------------------------------------------------------------------------------------------------- tables


def _mean_sd(values: list[float]) -> str:
    if not values:
        return "n/a"
    return f"{np.mean(values):.3f} ± {np.std(values):.3f}"


def miccai_table(rows: list[dict[str, Any]], methods: list[str]) -> list[str]:
    lines = [
        "| method | GM Dice | WM Dice | CSF Dice* | seconds (mean, max) | +RSS MB (max) | failures |",
        "|---|---|---|---|---|---|---|",
    ]
    for method in ["FAST (shipped)", *methods]:
        mine = [r for r in rows if r["method"] == method]
        ok = [r for r in mine if "error" not in r]
        secs = [r["seconds"] for r in ok if "seconds" in r]
        rss = [r["rss_delta_mb"] for r in ok if "rss_delta_mb" in r]
        timing = f"{np.mean(secs):.1f}, {np.max(secs):.1f}" if secs else "n/a (precomputed)"
        memory = f"{max(rss):.0f}" if rss else "n/a"
        lines.append(
            f"| {method} | {_mean_sd([r['GM'] for r in ok])} | {_mean_sd([r['WM'] for r in ok])} | "
            f"{_mean_sd([r['CSF'] for r in ok])} | {timing} | {memory} | {len(mine) - len(ok)} |"
        )
    return lines


def per_subject_table(rows: list[dict[str, Any]], methods: list[str]) -> list[str]:
    shown = [m for m in ("FAST (shipped)", *methods) if m in ("FAST (shipped)", "mrf", "atropos", "kmeans")]
    lines = ["| subject | " + " | ".join(f"{m} GM / WM" for m in shown) + " |", "|---" * (len(shown) + 1) + "|"]
    for case in sorted({r["case"] for r in rows}):
        cells = []
        for m in shown:
            hit = [r for r in rows if r["case"] == case and r["method"] == m and "error" not in r]
            cells.append(f"{hit[0]['GM']:.3f} / {hit[0]['WM']:.3f}" if hit else "failed")
        lines.append(f"| {case} | " + " | ".join(cells) + " |")
    return lines


def brainweb_table(rows: list[dict[str, Any]]) -> list[str]:
    lines = [
        "| contrast | noise | bias | method | n | CSF Dice | GM Dice | WM Dice | seconds |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    keys = sorted(
        {(r["contrast"], r["noise"], r["bias"], r["method"]) for r in rows},
        key=lambda k: ("T1 T2 PD".index(k[0]), k[1], k[2], k[3]),
    )
    for contrast, noise, bias, method in keys:
        ok = [
            r
            for r in rows
            if (r["contrast"], r["noise"], r["bias"], r["method"]) == (contrast, noise, bias, method)
            and "error" not in r
        ]
        if not ok:
            lines.append(f"| {contrast} | {noise * 100:g}% | {bias * 100:g}% | {method} | 0 | failed | | | |")
            continue
        lines.append(
            f"| {contrast} | {noise * 100:g}% | {bias * 100:g}% | {method} | {len(ok)} | "
            f"{np.mean([r['CSF'] for r in ok]):.3f} | {np.mean([r['GM'] for r in ok]):.3f} | "
            f"{np.mean([r['WM'] for r in ok]):.3f} | {np.mean([r['seconds'] for r in ok]):.1f} |"
        )
    return lines


def targets(miccai: list[dict[str, Any]], brainweb: list[dict[str, Any]]) -> list[str]:
    def mean(method: str, key: str, rows: list[dict[str, Any]]) -> float:
        vals = [r[key] for r in rows if r["method"] == method and "error" not in r]
        return float(np.mean(vals)) if vals else float("nan")

    lines = []
    if miccai:
        for peer in ("FAST (shipped)", "atropos"):
            for key in ("GM", "WM"):
                ours, theirs = mean("mrf", key, miccai), mean(peer, key, miccai)
                verdict = "met" if ours >= theirs else "MISSED"
                lines.append(f"- MICCAI mean {key} Dice, mrf {ours:.3f} >= {peer} {theirs:.3f}: {verdict}")
    at3 = [r for r in brainweb if r["method"] == "mrf" and r["noise"] == 0.03 and "error" not in r]
    if at3:
        worst = min(min(r["GM"], r["WM"]) for r in at3)
        verdict = "met" if worst >= 0.92 else "MISSED"
        lines.append(f"- BrainWeb 3 % noise, mrf worst GM/WM Dice over {len(at3)} scans {worst:.3f} >= 0.92: {verdict}")
    return lines


# ---------------------------------------------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="3 MICCAI subjects and a small BrainWeb grid")
    parser.add_argument("--methods", nargs="+", default=[*OURS, *PEERS], help="methods (name:key=value,...)")
    parser.add_argument("--subjects", nargs="+", help="MICCAI subject ids (default: all 15, or 3 with --quick)")
    parser.add_argument("--no-miccai", action="store_true")
    parser.add_argument("--no-brainweb", action="store_true")
    parser.add_argument("--anatomies", type=int, default=2, choices=(1, 2), help="BrainWeb models (--quick: 1)")
    parser.add_argument("--anatomy", nargs="+", help=f"BrainWeb model names instead (default {', '.join(ANATOMIES)})")
    parser.add_argument("--contrasts", nargs="+", default=["T1", "T2", "PD"], help="BrainWeb contrasts to simulate")
    parser.add_argument(
        "--n4",
        action="store_true",
        help="N4-correct each MICCAI scan first (mriquant's N4 in the non-zero region, as "
        "'mriquant segment --skullstripped' does) and give every method that input",
    )
    parser.add_argument("--out", type=Path, default=RESULTS / "latest.md")
    parser.add_argument(
        "--from-log", type=Path, nargs="+", help="only rebuild the tables from the JSON lines a (partial) run printed"
    )
    args = parser.parse_args(argv)
    if args.quick:
        args.anatomies = 1
    if not MICCAI.is_dir() or not BRAINWEB.is_dir():
        print(f"data not found under {DATA} (see shared/data/README.md)", file=sys.stderr)
        return 2
    if args.from_log:
        return report_from_logs(args)
    started = time.perf_counter()
    miccai: list[dict[str, Any]] = []
    if not args.no_miccai:
        subjects = args.subjects or (
            list(QUICK_SUBJECTS) if args.quick else sorted(p.name.split("_")[0] for p in MICCAI.glob("*_SS.nii.gz"))
        )
        for case in miccai_cases(subjects):
            case = with_n4(case) if args.n4 else case
            miccai.append({"case": case.name, "method": "FAST (shipped)", **scores(case.extra.pop("fast"), case.truth)})
            for spec in args.methods:
                miccai.append(measure(spec, case))
                print(json.dumps(miccai[-1], default=float), flush=True)
    brainweb: list[dict[str, Any]] = []
    if not args.no_brainweb:
        anatomies = tuple(args.anatomy) if args.anatomy else ANATOMIES[: args.anatomies]
        grid = [g for g in (QUICK_GRID if args.quick else FULL_GRID) if g[0] in args.contrasts]
        for case in brainweb_cases(anatomies, grid):
            standard = (case.contrast, case.extra["noise"], case.extra["bias"]) in STANDARD
            for spec in args.methods:
                if spec == "mrf" or (standard and parse_method(spec)[0] in OURS):
                    brainweb.append(measure(spec, case))
                    print(json.dumps(brainweb[-1], default=float), flush=True)
    report(args, miccai, brainweb, time.perf_counter() - started)
    return 0


def report_from_logs(args: argparse.Namespace) -> int:
    """Tables from the JSON lines of earlier runs (FAST's Dice recomputed for the subjects seen)."""
    rows = [
        json.loads(line) for path in args.from_log for line in path.read_text().splitlines() if line.startswith("{")
    ]
    miccai = [r for r in rows if "contrast" not in r]
    brainweb = [r for r in rows if "contrast" in r]
    for case in miccai_cases(sorted({r["case"] for r in miccai})):
        miccai.append({"case": case.name, "method": "FAST (shipped)", **scores(case.extra.pop("fast"), case.truth)})
    args.methods = list(dict.fromkeys(r["method"] for r in rows if r["method"] != "FAST (shipped)"))
    report(args, miccai, brainweb, float("nan"))
    return 0


def report(
    args: argparse.Namespace, miccai: list[dict[str, Any]], brainweb: list[dict[str, Any]], seconds: float
) -> None:
    when = (
        f"Assembled {time.strftime('%Y-%m-%d %H:%M')} from the logs of {', '.join(p.name for p in args.from_log)}"
        if args.from_log
        else f"Run {time.strftime('%Y-%m-%d %H:%M')}, {seconds / 60:.1f} min total"
    )
    lines = [
        f"# Tissue segmentation benchmark ({'quick' if args.quick else 'full'})",
        "",
        f"{when}; {os.cpu_count()} CPUs shared with other jobs (load average now {os.getloadavg()[0]:.1f}: "
        "times are wall clock under that load); each method in a forked child process, "
        "+RSS = its peak resident memory minus its resident memory at the start.",
        "",
    ]
    if miccai:
        n = len({r["case"] for r in miccai})
        given = ", N4-corrected first, FAST (shipped) on the raw scan" if getattr(args, "n4", False) else ""
        lines += [
            f"## MICCAI 2012 training, {n} subjects (1 mm T1, given brain mask{given})",
            "",
            *miccai_table(miccai, args.methods),
            "",
            "*CSF truth is mostly the ventricles (sulcal CSF is unlabelled): CSF Dice is low for every "
            "method and not a target.",
            "",
            *per_subject_table(miccai, args.methods),
            "",
        ]
    if brainweb:
        lines += [
            "## BrainWeb simulations (1 mm, true brain mask; mean over anatomies)",
            "",
            *brainweb_table(brainweb),
            "",
        ]
    lines += ["## Targets", "", *targets(miccai, brainweb), ""]
    text = "\n".join(lines)
    print(text)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text, encoding="utf-8")
    args.out.with_suffix(".json").write_text(
        json.dumps({"miccai": miccai, "brainweb": brainweb}, indent=1, default=float), encoding="utf-8"
    )


if __name__ == "__main__":
    sys.exit(main())
