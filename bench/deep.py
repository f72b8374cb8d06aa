"""Benchmark of ``--method deep`` (dual-task U-Net) against the classical ``atlas`` and ``mrf`` in the same run.

Data (see ../shared/data/README.md; the benchmark stops with a message when it is absent):

- **MICCAI 2012 training subjects held out from the network's training** (``--subjects``, default the five
  the shipped weights never saw: 1013, 1014, 1015, 1017, 1036; the manifest lists the training and
  validation subjects). Real skull-stripped 1 mm T1 scans with their brain masks. Structures: Dice and
  HD95 (mm) on the 15 subcortical structures (L/R thalamus, caudate, putamen, pallidum, hippocampus,
  amygdala, lateral ventricle, and brainstem) against ``_glm`` mapped to FreeSurfer ids; tissues: GM and
  WM Dice against ``_classified``.
- **BrainWeb** T2 and PD (and T1) scans simulated from crisp anatomical models the network never saw (no
  BrainWeb data is used in training) by :func:`mriquant.simulate.brainweb.simulate` (1 mm, 3 % noise,
  20 % bias), segmented inside the true brain mask: tissue GM and WM Dice against the model.

Methods, each on the same image and mask:

- ``deep``: the bundled weights (or ``--weights DIR``), affine registration to MNI152 included, flip
  test-time augmentation, the network's posteriors refined by the intensity EM (the default
  ``refine="em"``); ``deep-noflip`` without the flip (half the network time); ``deep-raw``: the network
  alone (``refine="none"``, flip on);
- ``atlas``: the shipped atlas (SynthSeg-20 priors, affine + SyN registration included) x intensity EM;
  ``atlas-miccai`` with ``--library FILE``: the MICCAI library with the test subject left out (its other
  14 subjects vote; the deep network saw 9 of them, so this peer has more expert data);
- ``mrf``: the default classical tissue method (EM + MRF + MNI152 priors, its own affine registration); on
  BrainWeb it is told the contrast (its default assumes T1), the deep network is not.

Every method runs in a forked child: ``s`` is its wall time (registration included), ``MB`` the child's
peak RSS growth. Results: ``bench/deep_results/latest.md`` (and ``latest.json``).

Usage::

    python bench/deep.py [--weights DIR] [--library /tmp/atl/miccai2012.npz] [--subjects 1013 1014]
    python bench/deep.py --no-miccai --contrasts T2 PD      # BrainWeb only
    python bench/deep.py --methods deep deep-noflip --reuse /tmp/peers/latest.json   # peers from an earlier run

``--reuse FILE`` takes the rows of methods *not* in ``--methods`` from an earlier ``latest.json`` (same
subjects and anatomies), so the classical peers need not be re-run for every set of weights; the report
says which rows were reused and when they were measured.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from _harness import BRAINWEB, DATA, MICCAI, results_dir, run_forked
from mriquant.core.image import Image, LabelImage
from mriquant.evaluate import apply_map, dice, evaluate_labels, load_map
from mriquant.io import read_image, read_labels

RESULTS = results_dir("deep_results")
HELD_OUT = ("1013", "1014", "1015", "1017", "1036")
STRUCTURES = {10: "L thal", 49: "R thal", 11: "L caud", 50: "R caud", 12: "L put", 51: "R put", 13: "L pall",
              52: "R pall", 17: "L hipp", 53: "R hipp", 18: "L amyg", 54: "R amyg", 4: "L LV", 43: "R LV",
              16: "stem"}  # fmt: skip
TARGET_STRUCTURES = 0.80
TARGET_TISSUE = 0.80


def _segment(method: str, image: Image, mask: LabelImage, subject: str, args: argparse.Namespace,
             contrast: str | None = None) -> Any:  # fmt: skip
    """``method`` on one scan; ``mrf`` is told the contrast when known (it assumes T1 otherwise), ``deep`` never."""
    from mriquant.segment import get_segmenter

    name = method.split("-")[0]
    cls = get_segmenter(name)
    if name == "deep":
        options = cls.options_type(weights=args.weights, flip=method != "deep-noflip",
                                   refine="none" if method == "deep-raw" else "em")
    elif method == "atlas-miccai":
        options = cls.options_type(atlas=str(args.library), exclude=subject)
    elif name == "mrf" and contrast is not None:
        options = cls.options_type(contrast=contrast)
    else:
        options = cls.options_type()
    return cls(options).segment(image, mask)


def _outputs(seg: Any) -> dict[str, Any]:
    """What the parent scores: the label maps and the method's own timings."""
    timings = {k: v for k, v in seg.info.items() if k.endswith("seconds")}
    return {"tissue": seg.tissue, "dseg": seg.dseg, "info": timings}


def run(method: str, image: Image, mask: LabelImage, subject: str, args: argparse.Namespace,
        contrast: str | None = None) -> dict[str, Any]:  # fmt: skip
    """``method`` on one scan in a forked child: its outputs, seconds and peak memory."""
    run = run_forked(_segment, method, image, mask, subject, args, contrast, post=_outputs)
    if run.error:  # a failure is a row in the table, not the end of the benchmark
        return {"error": run.error}
    return {"seconds": run.seconds, "mb": run.rss_delta_mb, **run.value}


def _tissue_scores(tissue: LabelImage | None, truth: np.ndarray) -> dict[str, float | None]:
    if tissue is None:
        return {"GM": None, "WM": None}
    return {name: dice(tissue.array == k, truth == k) for k, name in ((2, "GM"), (3, "WM"))}


def _structure_scores(dseg: LabelImage | None, truth: LabelImage) -> dict[str, Any]:
    if dseg is None:
        return {}
    metrics = evaluate_labels(dseg, truth, labels=list(STRUCTURES))
    per = {STRUCTURES[m.label]: m.dice for m in metrics}
    hd = [m.hd95_mm for m in metrics if m.hd95_mm is not None and np.isfinite(m.hd95_mm)]
    return {"structures": per, "mean_dice": float(np.mean(list(per.values()))), "mean_hd95": float(np.mean(hd))}


def reused_rows(args: argparse.Namespace) -> list[dict[str, Any]]:
    """Rows of an earlier run (``--reuse``) for the methods this run does not measure."""
    if args.reuse is None:
        return []
    earlier = json.loads(args.reuse.read_text())
    cases = set(args.subjects) | {f"{a} {c}" for a in args.anatomies for c in args.contrasts}
    rows = [r for r in earlier["rows"] if r["method"] not in args.methods and r["case"] in cases]
    for r in rows:
        r["reused"] = earlier.get("measured", str(args.reuse))
    return rows


def miccai_rows(args: argparse.Namespace) -> list[dict[str, Any]]:
    """Every method on every held-out MICCAI subject."""
    mapping = load_map("miccai2012-to-freesurfer")
    rows = []
    for subject in args.subjects:
        image = read_image(MICCAI / f"{subject}_SS.nii.gz")
        mask = read_labels(MICCAI / f"{subject}_mask.nii.gz")
        truth = apply_map(read_labels(MICCAI / f"{subject}_glm.nii.gz"), mapping)
        tissue_truth = np.asarray(read_labels(MICCAI / f"{subject}_classified.nii.gz").array)
        for method in args.methods:
            if method == "atlas-miccai" and args.library is None:
                continue
            out = run(method, image, mask, subject, args)
            row: dict[str, Any] = {"data": "miccai", "case": subject, "method": method}
            if "error" in out:
                row["error"] = out["error"]
            else:
                row.update(seconds=out["seconds"], mb=out["mb"], timing=out["info"])
                row.update(_structure_scores(out["dseg"], truth))
                row.update(_tissue_scores(out["tissue"], tissue_truth))
            rows.append(row)
            print(json.dumps({k: v for k, v in row.items() if k != "structures"}), flush=True)
    return rows


def brainweb_rows(args: argparse.Namespace) -> list[dict[str, Any]]:
    """Tissue methods on simulated BrainWeb scans."""
    from mriquant.simulate.brainweb import simulate

    rows = []
    for anatomy in args.anatomies:
        labels = read_labels(BRAINWEB / f"{anatomy}_crisp_v.mnc.gz")
        for contrast in args.contrasts:
            scan = simulate(labels, contrast=contrast, noise=0.03, bias=0.2, seed=1)
            truth = np.asarray(scan.tissue.array)
            for method in [m for m in ("deep", "deep-raw", "mrf") if m in args.methods]:
                out = run(method, scan.image, scan.brain_mask, anatomy, args, contrast)
                row: dict[str, Any] = {"data": "brainweb", "case": f"{anatomy} {contrast}", "method": method,
                                       "contrast": contrast}  # fmt: skip
                if "error" in out:
                    row["error"] = out["error"]
                else:
                    row.update(seconds=out["seconds"], mb=out["mb"], **_tissue_scores(out["tissue"], truth))
                rows.append(row)
                print(json.dumps(row), flush=True)
    return rows


def _f(value: Any, digits: int = 3) -> str:
    return "-" if value is None or (isinstance(value, float) and not np.isfinite(value)) else f"{value:.{digits}f}"


def _mean(rows: list[dict[str, Any]], key: str) -> float | None:
    values = [r[key] for r in rows if r.get(key) is not None]
    return float(np.mean(values)) if values else None


def report(rows: list[dict[str, Any]], args: argparse.Namespace, weights: dict[str, Any]) -> str:
    """Markdown tables: per method means, per structure, per subject, BrainWeb tissues."""
    lines = [f"# deep benchmark ({time.strftime('%Y-%m-%d %H:%M')})", "",
             f"Weights: {weights}", ""]  # fmt: skip
    miccai = [r for r in rows if r["data"] == "miccai" and "error" not in r]
    order = list(dict.fromkeys([*args.methods, *(r["method"] for r in rows)]))
    methods = [m for m in order if any(r["method"] == m for r in miccai)]
    reused = sorted({f"{r['method']} ({r['reused']})" for r in rows if "reused" in r})
    if reused:
        lines += [f"Rows reused from an earlier run of this benchmark (same inputs): {', '.join(reused)}.", ""]
    if miccai:
        lines += [f"## MICCAI 2012, held-out subjects {', '.join(args.subjects)} (real T1)", "",
                  "| method | mean Dice (15 structures) | min subject | HD95 mm | GM Dice | WM Dice | s | MB |",
                  "|---|---|---|---|---|---|---|---|"]  # fmt: skip
        for m in methods:
            mine = [r for r in miccai if r["method"] == m]
            subject_means = [r["mean_dice"] for r in mine if r.get("mean_dice") is not None]
            lines.append(f"| {m} | {_f(_mean(mine, 'mean_dice'))} | {_f(min(subject_means) if subject_means else None)}"
                         f" | {_f(_mean(mine, 'mean_hd95'), 2)} | {_f(_mean(mine, 'GM'))} | {_f(_mean(mine, 'WM'))}"
                         f" | {_f(_mean(mine, 'seconds'), 1)} | {_f(_mean(mine, 'mb'), 0)} |")  # fmt: skip
        structured = [m for m in methods if any(r.get("structures") for r in miccai if r["method"] == m)]
        lines += ["", "Per structure (mean Dice over the subjects):", "",
                  "| structure | " + " | ".join(structured) + " |", "|---|" + "---|" * len(structured)]  # fmt: skip
        for name in STRUCTURES.values():
            cells = []
            for m in structured:
                values = [r["structures"][name] for r in miccai if r["method"] == m and r.get("structures")]
                cells.append(_f(float(np.mean(values)) if values else None))
            lines.append(f"| {name} | " + " | ".join(cells) + " |")
        lines += ["", "Per subject (mean Dice of the 15 structures / GM / WM):", "",
                  "| subject | " + " | ".join(methods) + " |", "|---|" + "---|" * len(methods)]  # fmt: skip
        for subject in args.subjects:
            cells = []
            for m in methods:
                r = next((r for r in miccai if r["method"] == m and r["case"] == subject), None)
                cells.append("-" if r is None else f"{_f(r.get('mean_dice'))} / {_f(r.get('GM'))} / {_f(r.get('WM'))}")
            lines.append(f"| {subject} | " + " | ".join(cells) + " |")
    brainweb = [r for r in rows if r["data"] == "brainweb" and "error" not in r]
    if brainweb:
        lines += ["", "## BrainWeb (simulated, 3 % noise, 20 % bias; anatomies never seen in training)", "",
                  "| case | method | GM Dice | WM Dice | s | MB |", "|---|---|---|---|---|---|"]  # fmt: skip
        for r in brainweb:
            lines.append(f"| {r['case']} | {r['method']} | {_f(r['GM'])} | {_f(r['WM'])} | {_f(r['seconds'], 1)} "
                         f"| {_f(r['mb'], 0)} |")  # fmt: skip
    errors = [r for r in rows if "error" in r]
    if errors:
        lines += ["", "Failures:", ""] + [f"- {r['case']} {r['method']}: {r['error']}" for r in errors]
    lines += ["", targets(miccai, brainweb)]
    return "\n".join(lines) + "\n"


def targets(miccai: list[dict[str, Any]], brainweb: list[dict[str, Any]]) -> str:
    """One line per issue target: met or missed, with the measured value."""
    out = []
    deep = _mean([r for r in miccai if r["method"] == "deep"], "mean_dice")
    if deep is not None:
        verdict = "met" if deep >= TARGET_STRUCTURES else "MISSED"
        out.append(f"- 15-structure mean Dice on unseen real T1 >= {TARGET_STRUCTURES}: {deep:.3f} ({verdict})")
    for contrast in ("T2", "PD"):
        mine = [r for r in brainweb if r["method"] == "deep" and r.get("contrast") == contrast]
        if mine:
            gm, wm = _mean(mine, "GM"), _mean(mine, "WM")
            ok = gm is not None and wm is not None and min(gm, wm) >= TARGET_TISSUE
            out.append(f"- tissue GM/WM Dice on unseen {contrast} >= {TARGET_TISSUE}: {_f(gm)}/{_f(wm)} "
                       f"({'met' if ok else 'MISSED'})")  # fmt: skip
    return "Targets:\n\n" + "\n".join(out) if out else ""


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--weights", default="default", help="deep weights: 'default', an export or a run folder")
    p.add_argument("--library", type=Path, help="MICCAI atlas library (.npz) for the atlas-miccai peer")
    p.add_argument("--subjects", nargs="+", default=list(HELD_OUT))
    p.add_argument("--methods", nargs="+", default=["deep", "deep-raw", "deep-noflip", "atlas", "atlas-miccai", "mrf"])
    p.add_argument("--anatomies", nargs="+", default=["subject04", "subject05"])
    p.add_argument("--contrasts", nargs="+", default=["T1", "T2", "PD"])
    p.add_argument("--no-miccai", action="store_true")
    p.add_argument("--no-brainweb", action="store_true")
    p.add_argument("--out", type=Path, default=RESULTS)
    p.add_argument("--reuse", type=Path, help="latest.json of an earlier run: rows of methods not in --methods")
    return p.parse_args(argv)


def describe_weights(weights: str) -> dict[str, Any]:
    """File, SHA-256 and version of the deep weights, read without PyTorch.

    The parent process must not start PyTorch's thread pool before forking the children that run the methods
    (a forked child then hangs in its first parallel operation).
    """
    from mriquant.models import WEIGHTS_DIR, file_sha256

    folder = Path(WEIGHTS_DIR) if weights == "default" else Path(weights)
    manifest = folder / "manifest.json"
    if manifest.is_file():
        entry = json.loads(manifest.read_text())["models"]["deep"]
        return {k: entry.get(k) for k in ("file", "sha256", "version", "date", "training_steps")}
    return {"file": str(folder / "best.pt"), "sha256": file_sha256(folder / "best.pt"), "version": "development"}


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if not MICCAI.is_dir() or not BRAINWEB.is_dir():
        print(f"benchmark data not found under {DATA}; see ../shared/data/README.md", file=sys.stderr)
        return 2
    weights = describe_weights(args.weights) if any(m.startswith("deep") for m in args.methods) else {}
    rows = [] if args.no_miccai else miccai_rows(args)
    rows += [] if args.no_brainweb else brainweb_rows(args)
    rows += reused_rows(args)
    text = report(rows, args, weights)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "latest.md").write_text(text)
    measured = time.strftime("%Y-%m-%d %H:%M")
    document = {"weights": weights, "measured": measured, "load": os.getloadavg(), "rows": rows}
    (args.out / "latest.json").write_text(json.dumps(document, indent=1, default=str))
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
