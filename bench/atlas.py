"""Benchmark of ``--method atlas`` on the 15 MICCAI 2012 training subjects (leave-one-out), with a peer.

Truth: ``_glm`` through the shipped ``miccai2012-to-freesurfer`` map; scored on the 15 subcortical
structures of issue 4 (L/R thalamus, caudate, putamen, pallidum, hippocampus, amygdala, lateral
ventricle, and brainstem): Dice and HD95 (mm) from :func:`mriquant.evaluate.evaluate_labels`.

Methods (same registration of each subject to MNI152, affine + SyN, computed once and timed):

- ``loo-em`` / ``loo-majority`` / ``loo-local``: the MICCAI library built by
  ``python -m mriquant.training.atlas --pairs ../shared/data/miccai2012/train --map
  miccai2012-to-freesurfer --name miccai2012 ...`` with the test subject left out
  (``--exclude``): locally weighted votes x intensity EM, plain majority voting, locally weighted voting;
- ``default-em``: the shipped priors-only atlas (20 SynthSeg label maps, FreeSurfer protocol; it never saw
  these subjects, but its protocol differs from the MICCAI one, e.g. hippocampus/amygdala borders);
- ``ants-jlf`` (peer, ``--jlf N``): ANTs joint label fusion (Wang et al. 2013, antspyx) of the N library
  subjects nearest in subject order, each registered to the test subject with ANTs SyN (``SyN`` preset).

Every method runs in a forked child; ``s`` is the method's wall time (the shared registration's seconds
are listed separately and added in ``total s``); ``MB`` the child's peak RSS growth.

Usage::

    python bench/atlas.py --library /tmp/atl/miccai2012.npz [--subjects 1000 1001] [--jlf 4 --jlf-subjects 3]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from _harness import MICCAI, results_dir, run_forked
from mriquant.evaluate import apply_map, evaluate_labels, load_map
from mriquant.io import read_image, read_labels

RESULTS = results_dir("atlas_results")
SUBJECTS = ("1000", "1001", "1002", "1006", "1007", "1008", "1009", "1010", "1011", "1012", "1013", "1014", "1015",
            "1017", "1036")  # fmt: skip
STRUCTURES = {10: "L thal", 49: "R thal", 11: "L caud", 50: "R caud", 12: "L put", 51: "R put", 13: "L pall",
              52: "R pall", 17: "L hipp", 53: "R hipp", 18: "L amyg", 54: "R amyg", 4: "L LV", 43: "R LV",
              16: "stem"}  # fmt: skip
METHODS = ("loo-em", "loo-majority", "loo-local", "default-em")


def _segment(method: str, subject: str, library: str, tx_dir: Path, jlf: int) -> np.ndarray:
    from mriquant.core.transform import Transform
    from mriquant.segment.atlas import AtlasOptions, AtlasSegmenter

    image = read_image(MICCAI / f"{subject}_SS.nii.gz")
    mask = read_labels(MICCAI / f"{subject}_mask.nii.gz")
    if method == "ants-jlf":
        return _jlf(subject, image, mask, jlf)
    atlas, fusion = (library, method.split("-")[1]) if method.startswith("loo") else ("default", "em")
    options = AtlasOptions(atlas=atlas, fusion=fusion, exclude=subject)  # type: ignore[arg-type]
    seg = AtlasSegmenter(options, to_mni=Transform.load(tx_dir / subject)).segment(image, mask)
    assert seg.dseg is not None
    return np.asarray(seg.dseg.array)


def _jlf(subject: str, image: Any, mask: Any, n: int) -> np.ndarray:
    import ants

    from mriquant.core.ants_bridge import to_ants

    mapping = load_map("miccai2012-to-freesurfer")
    others = [s for s in SUBJECTS if s != subject][:n]
    target, target_mask = to_ants(image), to_ants(mask.with_array(mask.array.astype(np.float32)))
    images, labels = [], []
    for other in others:
        moving = to_ants(read_image(MICCAI / f"{other}_SS.nii.gz"))
        lab = apply_map(read_labels(MICCAI / f"{other}_glm.nii.gz"), mapping)
        reg = ants.registration(target, moving, type_of_transform="SyN")
        images.append(ants.apply_transforms(target, moving, reg["fwdtransforms"]))
        warped = ants.apply_transforms(target, to_ants(lab.with_array(lab.array.astype(np.float32))),
                                       reg["fwdtransforms"], interpolator="genericLabel")  # fmt: skip
        labels.append(warped)
    fused = ants.joint_label_fusion(target, target_mask, atlas_list=images, label_list=labels, rad=2)
    return np.rint(fused["segmentation"].numpy()).astype(np.int16)


def register(subject: str, tx_dir: Path) -> float:
    """Register the subject to MNI152 (affine + SyN) once; cached; returns the seconds it took."""
    from mriquant.preprocess.register import register_to_mni

    meta = tx_dir / subject / "bench.json"
    if meta.exists():
        return float(json.loads(meta.read_text())["seconds"])
    t0 = time.perf_counter()
    image = read_image(MICCAI / f"{subject}_SS.nii.gz")
    tx = register_to_mni(image, mask=read_labels(MICCAI / f"{subject}_mask.nii.gz"), kind="syn")
    seconds = time.perf_counter() - t0
    tx.save(tx_dir / subject)
    meta.write_text(json.dumps({"seconds": seconds, "quality": tx.meta.get("quality")}))
    return seconds


def measure(method: str, subject: str, library: str, tx_dir: Path, jlf: int) -> dict[str, Any]:
    """One method on one subject in a forked child: Dice/HD95 per structure, seconds, memory."""
    run = run_forked(_segment, method, subject, library, tx_dir, jlf, post=lambda labels: labels.astype(np.int16))
    result: dict[str, Any] = (
        {"error": run.error} if run.error else {"seconds": run.seconds, "mb": run.rss_delta_mb, "labels": run.value}
    )
    row: dict[str, Any] = {"subject": subject, "method": method}
    if "labels" in result:
        truth = apply_map(read_labels(MICCAI / f"{subject}_glm.nii.gz"), load_map("miccai2012-to-freesurfer"))
        pred = truth.with_array(result.pop("labels").astype(np.int32))
        metrics = evaluate_labels(pred, truth, labels=list(STRUCTURES))
        row["dice"] = {m.label: m.dice for m in metrics}
        row["hd95"] = {m.label: m.hd95_mm for m in metrics}
    return {**row, **result}


def _mean(values: list[float]) -> float:
    return float(np.mean(values)) if values else float("nan")


def report(rows: list[dict[str, Any]], reg_seconds: dict[str, float]) -> str:
    """Markdown tables: summary per method, then mean Dice per structure."""
    methods = [m for m in (*METHODS, "ants-jlf") if any(r["method"] == m for r in rows)]
    lines = ["## Atlas segmentation, MICCAI 2012 training (leave-one-out), 15 subcortical structures", "",
             "| method | subjects | mean Dice (sd over subjects) | min subject | mean HD95 mm | s | reg s | total s "
             "| MB | failed |", "|---|---|---|---|---|---|---|---|---|---|"]  # fmt: skip
    for m in methods:
        ok = [r for r in rows if r["method"] == m and "dice" in r]
        per_subject = [_mean([d for d in r["dice"].values() if d is not None]) for r in ok]
        hd = [_mean([h for h in r["hd95"].values() if h is not None and np.isfinite(h)]) for r in ok]
        secs = _mean([r["seconds"] for r in ok])
        reg = 0.0 if m == "ants-jlf" else _mean([reg_seconds[r["subject"]] for r in ok])
        failed = sum(1 for r in rows if r["method"] == m and "dice" not in r)
        lines.append(f"| {m} | {len(ok)} | {_mean(per_subject):.3f} ({np.std(per_subject):.3f}) | "
                     f"{min(per_subject, default=float('nan')):.3f} | {_mean(hd):.2f} | {secs:.1f} | {reg:.1f} | "
                     f"{secs + reg:.1f} | {_mean([r['mb'] for r in ok]):.0f} | {failed} |")  # fmt: skip
    lines += ["", "| method | " + " | ".join(STRUCTURES.values()) + " |", "|---" * (len(STRUCTURES) + 1) + "|"]
    for m in methods:
        ok = [r for r in rows if r["method"] == m and "dice" in r]
        cells = [f"{_mean([r['dice'][k] for r in ok if r['dice'].get(k) is not None]):.3f}" for k in STRUCTURES]
        lines.append(f"| {m} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    """Entry point."""
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--library", required=True, help="MICCAI library atlas (.npz from mriquant.training.atlas)")
    p.add_argument("--subjects", nargs="+", default=list(SUBJECTS))
    p.add_argument("--methods", nargs="+", default=list(METHODS))
    p.add_argument("--jlf", type=int, default=0, help="atlases of the ANTs joint label fusion peer (0: skip)")
    p.add_argument("--jlf-subjects", type=int, default=3, help="subjects the (slow) peer runs on")
    p.add_argument("--work", type=Path, default=Path("/tmp/atl/bench"))
    args = p.parse_args(argv)
    if not MICCAI.is_dir():
        print(f"needs {MICCAI} (see ../shared/data/README.md)", file=sys.stderr)
        return 2
    tx_dir = args.work / "tx"
    tx_dir.mkdir(parents=True, exist_ok=True)
    cache = args.work / "rows.json"
    rows: list[dict[str, Any]] = json.loads(cache.read_text()) if cache.exists() else []
    done = {(r["subject"], r["method"]) for r in rows if "dice" in r}
    rows = [r for r in rows if "dice" in r]
    reg_seconds = {}
    for subject in args.subjects:
        reg_seconds[subject] = register(subject, tx_dir)
        methods = list(args.methods) + (["ants-jlf"] if args.jlf and subject in args.subjects[: args.jlf_subjects]
                                        else [])  # fmt: skip
        for method in methods:
            if (subject, method) in done:
                continue
            row = measure(method, subject, args.library, tx_dir, args.jlf)
            rows.append(row)
            cache.write_text(json.dumps(rows, default=float))
            dice = _mean([d for d in row.get("dice", {}).values() if d is not None])
            print(f"{subject} {method}: Dice {dice:.3f} {row.get('seconds', 0):.1f} s {row.get('error', '')}",
                  flush=True)  # fmt: skip
    for r in rows:  # JSON round trips turn int keys into strings
        for key in ("dice", "hd95"):
            if key in r:
                r[key] = {int(k): v for k, v in r[key].items()}
    reg_seconds.update({s: register(s, tx_dir) for s in {r["subject"] for r in rows}})
    table = report(rows, reg_seconds)
    print(table)
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "latest.md").write_text(table)
    (RESULTS / "latest.json").write_text(json.dumps({"rows": rows, "registration_seconds": reg_seconds},
                                                    default=float, indent=1))  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
