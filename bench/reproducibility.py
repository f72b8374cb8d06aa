"""Reproducibility benchmark: the same scan run twice gives the same maps and numbers, and they agree.

Usage::

    python bench/reproducibility.py [--scans demo philips miccai-1013] [--runs 2] [--threads-check] [--work DIR]

Each scan goes through ``mriquant run`` ``--runs`` times, each in its own child process (as a user runs it),
with the default settings (one ITK thread for ANTs: ``mriquant.core.ants_bridge``). The table says whether
``dseg.nii.gz``, ``tissue.nii.gz`` and every number of ``volumes.json`` are identical between the runs, and
checks the consistency of the numbers: the grey-matter structures sum to no more than the grey matter
(``totals.grey_matter_structures_ml`` / ``tissues.gm_ml``, limit 1.02) and the parenchyma of the structures
is within 3 % of GM + WM. ``--threads-check`` adds one run per scan with ``ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS=2``
(the setting before 2026-12-06) to measure what determinism costs in time, back to back on the same machine.

Scans: the demo T1 (0.88 mm, niivue), the Philips MPRAGE DICOM series, and MICCAI 2012 subject 1013 (held out
of the network's training; skull-stripped, run with ``--skullstripped``).

Writes ``bench/reproducibility_results/latest.md`` and ``latest.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np

from _harness import DATA, MICCAI, REPO, results_dir

RESULTS = results_dir("reproducibility_results")
SCANS: dict[str, tuple[Path, list[str]]] = {
    "demo": (REPO / "src" / "mriquant" / "data" / "demo" / "chris_t1.nii.gz", []),
    "philips": (DATA / "dicom" / "philips-t1-mprage" / "dicom", []),
    "miccai-1013": (MICCAI / "1013_SS.nii.gz", ["--skullstripped"]),
}
GM_LIMIT = 1.02
PARENCHYMA_LIMIT = 0.03


def run_once(scan: str, out: Path, threads: str | None) -> float:
    """``mriquant run`` on ``scan`` in a child process; returns its wall time in seconds."""
    source, flags = SCANS[scan]
    env = {k: v for k, v in os.environ.items() if k != "ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS"}
    env["PYTHONPATH"] = str(REPO / "src")  # this checkout, not an installed copy
    if threads is not None:
        env["ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS"] = threads
    command = [sys.executable, "-m", "mriquant", "-q", "run", str(source), "-o", str(out), "--force", *flags]
    t0 = time.perf_counter()
    subprocess.run(command, env=env, check=True)
    return time.perf_counter() - t0


def _numbers(doc: Any, prefix: str = "") -> dict[str, float]:
    """Every number in a JSON document, keyed by its path."""
    if isinstance(doc, dict):
        return {k: v for key, value in doc.items() for k, v in _numbers(value, f"{prefix}/{key}").items()}
    if isinstance(doc, list):
        return {k: v for i, value in enumerate(doc) for k, v in _numbers(value, f"{prefix}/{i}").items()}
    return {prefix: float(doc)} if isinstance(doc, int | float) and not isinstance(doc, bool) else {}


def compare(a: Path, b: Path) -> dict[str, Any]:
    """Voxels that differ in the label maps and numbers that differ in ``volumes.json``."""
    out: dict[str, Any] = {}
    for name in ("dseg", "tissue", "brain_mask"):
        x, y = (np.asarray(nib.load(p / f"{name}.nii.gz").dataobj) for p in (a, b))
        out[f"{name}_voxels_differing"] = int((x != y).sum())
    na, nb = (_numbers(json.loads((p / "volumes.json").read_text())) for p in (a, b))
    differing = sorted(k for k in na.keys() | nb.keys() if na.get(k) != nb.get(k))
    out["volumes_numbers"] = len(na)
    out["volumes_numbers_differing"] = len(differing)
    out["volumes_differing_examples"] = differing[:5]
    return out


def consistency(folder: Path) -> dict[str, Any]:
    """Grey-matter structures against GM, and structure parenchyma against GM + WM."""
    doc = json.loads((folder / "volumes.json").read_text())
    gm, wm = doc["tissues"]["gm_ml"], doc["tissues"]["wm_ml"]
    totals = doc["totals"]
    cortex = {s["name"]: s["volume_ml"] for s in doc["structures"] if s["name"].endswith("Cerebral-Cortex")}
    return {
        "gm_ml": gm, "wm_ml": wm, "grey_structures_ml": totals["grey_matter_structures_ml"],
        "grey_ratio": round(totals["grey_matter_structures_ml"] / gm, 4),
        "parenchyma_structures_ml": totals["parenchyma_ml"],
        "parenchyma_ratio": round(totals["parenchyma_ml"] / (gm + wm), 4),
        "cortex_ml": cortex, "etiv_ml": doc["etiv_ml"],
    }  # fmt: skip


def bench_scan(scan: str, work: Path, runs: int, threads_check: bool) -> dict[str, Any]:
    folders = [work / f"{scan}-{i}" for i in range(runs)]
    seconds = [round(run_once(scan, folder, None), 1) for folder in folders]
    row: dict[str, Any] = {"scan": scan, "seconds": seconds, **consistency(folders[0])}
    row.update(compare(folders[0], folders[-1]))
    if threads_check:
        row["seconds_itk2"] = round(run_once(scan, work / f"{scan}-itk2", "2"), 1)
        row["itk2_vs_itk1"] = compare(folders[0], work / f"{scan}-itk2")
    return row


def table(rows: list[dict[str, Any]]) -> str:
    lines = [
        "| scan | identical dseg / tissue / mask | volumes.json numbers differing | GM structures / GM "
        f"(<= {GM_LIMIT}) | structure parenchyma / (GM + WM) | seconds per run | seconds, 2 ITK threads |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        same = " / ".join("yes" if r[f"{k}_voxels_differing"] == 0 else f"no ({r[f'{k}_voxels_differing']})"
                          for k in ("dseg", "tissue", "brain_mask"))  # fmt: skip
        lines.append(
            f"| {r['scan']} | {same} | {r['volumes_numbers_differing']} of {r['volumes_numbers']} | "
            f"{r['grey_ratio']:.3f} | {r['parenchyma_ratio']:.3f} | {', '.join(map(str, r['seconds']))} | "
            f"{r.get('seconds_itk2', '')} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--scans", nargs="+", default=list(SCANS), choices=list(SCANS))
    p.add_argument("--runs", type=int, default=2)
    p.add_argument("--threads-check", action="store_true")
    p.add_argument("--work", type=Path)
    args = p.parse_args(argv)
    missing = [s for s in args.scans if not SCANS[s][0].exists()]
    if missing:
        print(f"skipping {', '.join(missing)}: data not found under {DATA}", file=sys.stderr)
    with tempfile.TemporaryDirectory(prefix="mriquant-repro-") as tmp:
        work = args.work or Path(tmp)
        rows = [bench_scan(s, work, args.runs, args.threads_check) for s in args.scans if s not in missing]
    text = table(rows)
    print(text)
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "latest.md").write_text(f"# Reproducibility ({time.strftime('%Y-%m-%d')})\n\n{text}\n")
    (RESULTS / "latest.json").write_text(json.dumps(rows, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
