"""What reconciling structures with tissues does to accuracy: Dice before and after ``ReconcileStep``.

Usage::

    python bench/reconcile.py [--subjects 1013 1014 1015 1017 1036]

Each MICCAI 2012 subject held out of the network's training goes through ``mriquant run``'s processing
steps (skull-stripped input: declared brain, N4, affine registration, ``deep``), then the reconcile step.
Against the expert labels (``_glm`` mapped to FreeSurfer ids; ``_classified`` for tissues) the table gives,
before and after: GM and WM Dice, the mean Dice of the 15 subcortical structures, the cortex Dice (both
hemispheres; the expert cortex labels cover the sulci, so reconciling is expected to lower it: the
structure then measures grey matter, not the expert's region), and grey-matter structures / GM.

Writes ``bench/reconcile_results/latest.md`` and ``latest.json``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from typing import Any

import numpy as np

from _harness import MICCAI, results_dir
from mriquant.core.labels import SUBCORTICAL_15, structure_classes
from mriquant.evaluate import apply_map, dice, load_map
from mriquant.io import read_image, read_labels

RESULTS = results_dir("reconcile_results")
HELD_OUT = ("1013", "1014", "1015", "1017", "1036")


def scores(tissue: np.ndarray, dseg: np.ndarray, truth_tissue: np.ndarray, truth_dseg: np.ndarray) -> dict[str, Any]:
    gm_structures = int((structure_classes(dseg) == 2).sum())
    return {
        "gm_dice": dice(tissue == 2, truth_tissue == 2),
        "wm_dice": dice(tissue == 3, truth_tissue == 3),
        "subcortical15_dice": float(np.nanmean([dice(dseg == k, truth_dseg == k) for k in SUBCORTICAL_15])),
        "cortex_dice": dice(np.isin(dseg, (3, 42)), np.isin(truth_dseg, (3, 42))),
        "grey_structures_over_gm": gm_structures / max(int((tissue == 2).sum()), 1),
    }


def bench_subject(subject: str) -> dict[str, Any]:
    from mriquant.core.case import Case
    from mriquant.pipeline import RunConfig, pipeline_steps

    case = Case(read_image(MICCAI / f"{subject}_SS.nii.gz"))
    steps = pipeline_steps(RunConfig(skullstripped=True))
    for step in steps[:-1]:
        case = step(case)
    t0 = time.perf_counter()
    after = steps[-1](case)
    seconds = time.perf_counter() - t0
    truth_dseg = apply_map(read_labels(MICCAI / f"{subject}_glm.nii.gz"), load_map("miccai2012-to-freesurfer")).array
    truth_tissue = read_labels(MICCAI / f"{subject}_classified.nii.gz").array
    row: dict[str, Any] = {"subject": subject, "reconcile_seconds": round(seconds, 2)}
    for name, c in (("before", case), ("after", after)):
        row[name] = scores(c.labels["tissue"].array, c.labels["dseg"].array, truth_tissue, truth_dseg)
    row["moved_ml"] = after.provenance[-1].params["moved_ml"]
    return row


def table(rows: list[dict[str, Any]]) -> str:
    keys = ("gm_dice", "wm_dice", "subcortical15_dice", "cortex_dice", "grey_structures_over_gm")
    header = "| subject | " + " | ".join(f"{k} before -> after" for k in keys) + " | s |"
    lines = [header, "|---" * (len(keys) + 2) + "|"]
    for r in rows:
        cells = [f"{r['before'][k]:.3f} -> {r['after'][k]:.3f}" for k in keys]
        lines.append(f"| {r['subject']} | " + " | ".join(cells) + f" | {r['reconcile_seconds']} |")
    mean = {k: (np.mean([r["before"][k] for r in rows]), np.mean([r["after"][k] for r in rows])) for k in keys}
    lines.append("| mean | " + " | ".join(f"{a:.3f} -> {b:.3f}" for a, b in mean.values()) + " | |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--subjects", nargs="+", default=list(HELD_OUT))
    args = p.parse_args(argv)
    if not MICCAI.is_dir():
        print(f"MICCAI 2012 data not found at {MICCAI}; nothing to measure.", file=sys.stderr)
        return 1
    rows = [bench_subject(s) for s in args.subjects]
    text = table(rows)
    print(text)
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "latest.md").write_text(f"# Reconcile: Dice before and after ({time.strftime('%Y-%m-%d')})\n\n{text}\n")
    (RESULTS / "latest.json").write_text(json.dumps(rows, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
