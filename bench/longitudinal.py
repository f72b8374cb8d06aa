"""Benchmark of ``mriquant longitudinal``'s PBVC on simulated BrainWeb pairs with a known brain-volume change.

Pairs (BrainWeb crisp anatomies 04, 05, 06, 0.5 mm labels, simulated T1 at 1 mm):

- ``thin``: baseline = ``simulate(labels, "T1", noise=0.03, bias=0.2, seed=a)``; follow-up = the same
  anatomy after a cortical thinning (GM voxels of the 0.5 mm model with a CSF face-neighbour become CSF,
  taken from the top of the head down until ``--loss`` percent of the brain tissue is gone), with the
  head rotated by a known rigid transform (a few degrees about each axis, applied to the label model
  with nearest neighbour, so the follow-up has its own partial volume), new noise and bias seeds;
- ``rescan``: same anatomy, rotated, new noise and bias.

Truth PBVC = 100 * (GM + WM voxels of the follow-up model / GM + WM voxels of the baseline model - 1),
counted on the 0.5 mm models (so the nearest-neighbour rotation's own small volume change is in the
truth). Both scans are masked with their simulated brain masks. Two modes (column ``mode``):

- ``pipeline`` (default): both run with ``skullstripped=True`` (N4 inside the mask; skull stripping is
  benchmarked elsewhere), the baseline segmented by ``run_pipeline`` with ``mrf`` tissues (no
  structures), then :func:`mriquant.quantify.longitudinal.measure_change`;
- ``truth`` (``--truth-tissue``, cheaper): no N4 and no segmentation; the baseline's tissue map is the
  simulated truth (majority class per 1 mm voxel), then the same ``measure_change``.

``measure_change`` runs with its default options (``pbvc_method="edge"``), so every row has the edge
boundary-shift PBVC (``edge %``) and, from the same run, the Jacobian-integration PBVC of the default SyN
(``jacobian %``); ``error`` is edge minus truth. Every pair runs in a forked child: ``s`` is its wall
time (preprocessing + segmentation + change, simulation excluded), ``MB`` the child's peak RSS (including
the simulation from the 0.5 mm model). Results: ``bench/longitudinal_results/latest.md`` (``--append``
merges the rows into the existing ``latest.json``, replacing rows of the same subject, pair and mode).

Usage::

    python bench/longitudinal.py [--subjects 04 05 06] [--kinds thin rescan] [--loss 1.0] [--truth-tissue]
        [--append]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from typing import Any

import numpy as np
import numpy.typing as npt
from scipy import ndimage

from _harness import BRAINWEB, results_dir, run_forked
from mriquant.core.case import Case
from mriquant.core.image import LabelImage
from mriquant.simulate.brainweb import SimulatedScan

RESULTS = results_dir("longitudinal_results")
TARGET_ERROR = 0.3
TARGET_RESCAN = 0.3


def thin_cortex(labels: LabelImage, loss_percent: float) -> LabelImage:
    """Relabel GM voxels with a CSF face-neighbour as CSF, top of the head first, until ``loss_percent`` is gone.

    Parameters
    ----------
    labels : LabelImage
        BrainWeb crisp model (2 GM, 1 CSF, 3 WM).
    loss_percent : float
        Brain-tissue (GM + WM) volume to remove, in percent.

    Returns
    -------
    LabelImage
        The thinned model (one 0.5 mm layer of the GM/CSF boundary in the superior part of the head).
    """
    array = labels.array
    tissue = int(np.isin(array, (2, 3)).sum())
    boundary = (array == 2) & ndimage.binary_dilation(array == 1, structure=ndimage.generate_binary_structure(3, 1))
    idx = np.argwhere(boundary)
    world_z = (labels.affine[:3, :3] @ idx.T.astype(np.float64))[2]
    take = idx[np.argsort(-world_z)[: round(tissue * loss_percent / 100.0)]]
    out = array.copy()
    out[tuple(take.T)] = 1
    return LabelImage(out, labels.affine.copy(), dict(labels.meta))


def rotation_matrix(angles_deg: tuple[float, float, float]) -> npt.NDArray[np.float64]:
    """3x3 rotation about x, then y, then z (degrees)."""
    from scipy.spatial.transform import Rotation

    return np.asarray(Rotation.from_euler("xyz", angles_deg, degrees=True).as_matrix(), dtype=np.float64)


def rotate_labels(labels: LabelImage, angles_deg: tuple[float, float, float], shift_vox: float) -> LabelImage:
    """Move the head inside the grid: rotate about the grid centre and shift (nearest neighbour, same grid)."""
    rot = rotation_matrix(angles_deg)
    centre = (np.array(labels.shape) - 1) / 2.0
    # output voxel v samples input rot^-1 (v - centre - shift) + centre
    inv = rot.T
    offset = centre - inv @ (centre + shift_vox)
    out = ndimage.affine_transform(labels.array, inv, offset=offset, order=0, mode="constant", cval=0)
    return LabelImage(out, labels.affine.copy(), dict(labels.meta))


def _tissue_voxels(labels: LabelImage) -> int:
    return int(np.isin(labels.array, (2, 3)).sum())


def _scan(labels: LabelImage, seed: int, bias: float) -> SimulatedScan:
    """Simulated T1 (1 mm, noise 3 %), masked with its simulated brain mask."""
    from mriquant.simulate.brainweb import simulate

    sim = simulate(labels, contrast="T1", noise=0.03, bias=bias, resolution_mm=1.0, seed=seed)
    masked = sim.image.with_array(np.where(sim.brain_mask.array > 0, sim.image.array, 0).astype(np.float32))
    return dataclasses.replace(sim, image=masked)


def _truth_case(scan: SimulatedScan) -> Case:
    """A case with the simulated brain mask and (majority) tissue map, no N4: the ``truth`` mode."""
    case = Case(scan.image)
    case.labels["brain_mask"] = scan.brain_mask
    case.labels["tissue"] = scan.tissue
    return case


def _measure(baseline: SimulatedScan, followup: SimulatedScan, mode: str) -> dict[str, Any]:
    from mriquant.core.case import Case
    from mriquant.pipeline import RunConfig, prepare_for_segmentation, run_pipeline
    from mriquant.quantify.longitudinal import measure_change

    if mode == "truth":
        base, follow = _truth_case(baseline), _truth_case(followup)
    else:
        base = run_pipeline(Case(baseline.image), RunConfig.classical(skullstripped=True, structures=False))
        follow = prepare_for_segmentation(Case(followup.image), skullstripped=True, registration=None)
    result = measure_change(base, follow)
    return {"pbvc": result.pbvc_percent, "method": result.pbvc_method, "registration": result.registration}


def run_pair(subject: str, kind: str, loss: float, index: int, mode: str = "pipeline") -> dict[str, Any]:
    """Simulate one pair, measure it, return the row (runs in a child process)."""
    from mriquant.io import read_labels

    t0 = time.perf_counter()
    labels = read_labels(BRAINWEB / f"subject{subject}_crisp_v.mnc.gz")
    changed = thin_cortex(labels, loss) if kind == "thin" else labels
    angles = (3.0 + index, -2.0, 4.0 - index)
    moved = rotate_labels(changed, angles, shift_vox=3.0)
    truth = 100.0 * (_tissue_voxels(moved) / _tissue_voxels(labels) - 1.0)
    baseline = _scan(labels, seed=10 + index, bias=0.2)
    followup = _scan(moved, seed=100 + index, bias=0.3)
    del labels, changed, moved
    sim_s = time.perf_counter() - t0
    t1 = time.perf_counter()
    out = _measure(baseline, followup, mode)
    reg = out["registration"]
    return {"subject": subject, "kind": kind, "mode": mode, "truth": truth, "pbvc": out["pbvc"],
            "error": out["pbvc"] - truth, "pbvc_method": out["method"],
            "jacobian": reg["deformable"]["pbvc_jacobian_percent"],
            "jacobian_error": reg["deformable"]["pbvc_jacobian_percent"] - truth,
            "edge_gain": reg["boundary_shift"]["gain"], "edge_area_factor": reg["boundary_shift"]["area_factor"],
            "edge_points": reg["boundary_shift"]["measured_points"],
            "rotation_true_deg": float(np.degrees(np.arccos((np.trace(rotation_matrix(angles)) - 1) / 2))),
            "rotation_found_deg": reg["rigid"]["rotation_deg"], "sim_s": sim_s, "s": time.perf_counter() - t1,
            "dice": reg["halfway"]["brain_mask_dice"]}  # fmt: skip


def _forked(*args: Any) -> dict[str, Any]:
    """One pair in a forked child; ``MB`` is the child's peak resident memory (the simulation included)."""
    run = run_forked(run_pair, *args, timeout=None, error_chars=None, print_traceback=True)
    if run.error:
        raise RuntimeError(f"pair {args} failed: {run.error}")
    row: dict[str, Any] = run.value
    row["MB"] = run.peak_mb
    return row


def _table(rows: list[dict[str, Any]]) -> str:
    lines = ["| subject | pair | mode | true PBVC % | edge % | error (points) | jacobian % | jacobian error | "
             "edge gain | rotation true / found (deg) | s | MB |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]  # fmt: skip
    for r in rows:
        lines.append(f"| {r['subject']} | {r['kind']} | {r['mode']} | {r['truth']:+.3f} | {r['pbvc']:+.3f} | "
                     f"{r['error']:+.3f} | {r['jacobian']:+.3f} | {r['jacobian_error']:+.3f} | "
                     f"{r['edge_gain']:.3f} | {r['rotation_true_deg']:.2f} / {r['rotation_found_deg']:.2f} | "
                     f"{r['s']:.0f} | {r['MB']:.0f} |")  # fmt: skip
    return "\n".join(lines)


def _summary(rows: list[dict[str, Any]]) -> str:
    parts = []
    for mode in sorted({r["mode"] for r in rows}):
        for name, error_key, pbvc_key in (("edge", "error", "pbvc"), ("jacobian", "jacobian_error", "jacobian")):
            thin = [abs(r[error_key]) for r in rows if r["kind"] == "thin" and r["mode"] == mode]
            rescan = [abs(r[pbvc_key]) for r in rows if r["kind"] == "rescan" and r["mode"] == mode]
            if thin:
                met = "met" if max(thin) <= TARGET_ERROR else "NOT met"
                parts.append(f"- {mode}, {name}: thinning mean |error| {np.mean(thin):.3f}, max {np.max(thin):.3f} "
                             f"points over {len(thin)} pairs (target <= {TARGET_ERROR}: {met})")  # fmt: skip
            if rescan:
                met = "met" if max(rescan) <= TARGET_RESCAN else "NOT met"
                parts.append(f"- {mode}, {name}: scan-rescan mean |PBVC| {np.mean(rescan):.3f}, max "
                             f"{np.max(rescan):.3f} % over {len(rescan)} pairs (target <= {TARGET_RESCAN}: {met})")
    return "\n".join(parts)


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark and write ``latest.md`` (+ ``latest.json``)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--subjects", nargs="+", default=["04", "05", "06"])
    parser.add_argument("--kinds", nargs="+", default=["thin", "rescan"])
    parser.add_argument("--loss", type=float, default=1.0, help="brain-tissue loss of the thinning pairs (percent)")
    parser.add_argument("--truth-tissue", action="store_true",
                        help="cheaper 'truth' mode: no N4 or segmentation, the simulated tissue map as baseline")
    parser.add_argument("--append", action="store_true", help="merge the rows into the existing latest.json")
    args = parser.parse_args(argv)  # fmt: skip
    if not BRAINWEB.is_dir():
        print(f"skipped: {BRAINWEB} not found", file=sys.stderr)
        return 0
    mode = "truth" if args.truth_tissue else "pipeline"
    rows: list[dict[str, Any]] = []
    if args.append and (RESULTS / "latest.json").is_file():
        rows = json.loads((RESULTS / "latest.json").read_text())
    for subject in args.subjects:
        index = (int(subject) - 4) % 3  # pair geometry by subject: 04, 05, 06 -> 0, 1, 2 (as before)
        for kind in args.kinds:
            row = _forked(subject, kind, args.loss, index, mode)
            rows = [r for r in rows if (r["subject"], r["kind"], r.get("mode")) != (subject, kind, mode)] + [row]
            print(json.dumps(row), file=sys.stderr, flush=True)
            print(_table([row]).splitlines()[-1], flush=True)
    rows.sort(key=lambda r: (r["mode"], r["subject"], r["kind"] != "thin"))
    RESULTS.mkdir(exist_ok=True)
    text = (f"# longitudinal PBVC benchmark\n\n{__doc__.split('Usage::')[0]}\n{_table(rows)}\n\n"
            f"{_summary(rows)}\n")  # fmt: skip
    (RESULTS / "latest.md").write_text(text)
    (RESULTS / "latest.json").write_text(json.dumps(rows, indent=1))
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
