"""Registration quality by label transfer: mriquant (via MNI) versus direct ANTs SyN.

The usual proxy for registration quality: register subjects, carry subject A's expert labels
to subject B and measure the overlap with B's own labels (Dice). Data: the MICCAI 2012
multi-atlas training set (``NNNN_SS.nii.gz`` skull-stripped T1, ``NNNN_glm.nii.gz``
Neuromorphometrics labels), consecutive pairs of the first subjects in id order.

* ``mriquant affine`` / ``mriquant SyN``: ``register_to_mni`` (defaults) for every subject once,
  then A -> MNI composed with MNI -> B (``Transform.compose``): N registrations serve all N^2 pairs.
* ``ANTs SyN direct`` (the peer): ``ants.registration(fixed=B, moving=A, type_of_transform="SyN")``
  with ANTsPy's defaults, one registration per pair, 1 mm images.

Labels are warped with nearest-neighbour interpolation in both. Dice columns:

* ``all``: mean over every glm label present in B (about 134: cortical parcels, subcortical, WM, CSF);
* ``aseg``: after mapping both to FreeSurfer aseg ids with ``src/mriquant/data/maps/miccai2012-to-freesurfer.tsv``
  (cortex becomes one label per hemisphere);
* ``sub15``: the 15 subcortical structures (glm 59/60 thalamus, 36/37 caudate, 57/58 putamen, 55/56 pallidum,
  47/48 hippocampus, 31/32 amygdala, 51/52 lateral ventricles, 35 brainstem).

Each method runs in its own process, so peak RSS (``resource.getrusage``; imports included) is per
method. Wall seconds depend on what else runs on the machine (the load average is printed); CPU
seconds (all threads) much less.

Usage::

    python bench/register.py [--data ../shared/data/miccai2012/train] [--pairs 5]
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

import numpy as np

from _harness import MICCAI, REPO, peak_rss_mb, run_script, timed
from mriquant.core.image import Image
from mriquant.io import read_image, read_labels

SUBCORTICAL = (59, 60, 36, 37, 57, 58, 55, 56, 47, 48, 31, 32, 51, 52, 35)
MAP = REPO / "src" / "mriquant" / "data" / "maps" / "miccai2012-to-freesurfer.tsv"


# ------------------------------------------------------------------------------------------------------------- helpers


def subjects(data: Path, count: int) -> list[str]:
    ids = sorted(p.name.split("_")[0] for p in data.glob("*_SS.nii.gz"))
    return ids[:count]


def mean_dice(pred: np.ndarray, truth: np.ndarray, labels: list[int]) -> float:
    scores = []
    for label in labels:
        a, b = pred == label, truth == label
        total = int(a.sum() + b.sum())
        if total:
            scores.append(2.0 * float(np.logical_and(a, b).sum()) / total)
    return float(np.mean(scores))


def load_aseg_map() -> dict[int, int] | None:
    if not MAP.is_file():
        return None
    from mriquant.evaluate import load_map

    return load_map(MAP)


def scores(pred: np.ndarray, truth: np.ndarray, aseg: dict[int, int] | None) -> dict[str, float | None]:
    present = [int(v) for v in np.unique(truth) if v != 0]
    out: dict[str, float | None] = {
        "all": mean_dice(pred, truth, present),
        "sub15": mean_dice(pred, truth, list(SUBCORTICAL)),
        "aseg": None,
    }
    if aseg is not None:
        lut = np.zeros(max(max(aseg), int(truth.max()), int(pred.max())) + 1, dtype=np.int32)
        for source, target in aseg.items():
            lut[source] = target
        mapped_truth = lut[truth]
        out["aseg"] = mean_dice(lut[pred], mapped_truth, [int(v) for v in np.unique(mapped_truth) if v != 0])
    return out


# ------------------------------------------------------------------------------------------------------------- workers


def worker_mriquant(data: Path, ids: list[str]) -> dict[str, Any]:
    """Register every subject to MNI (affine and SyN), then score the consecutive pairs through MNI."""
    from mriquant.core.transform import Transform
    from mriquant.preprocess.register import register_to_mni

    transforms: dict[str, dict[str, Transform]] = {"affine": {}, "syn": {}}
    runs: list[dict[str, Any]] = []
    for sid in ids:
        image = read_image(data / f"{sid}_SS.nii.gz")
        kinds: tuple[Literal["affine", "syn"], ...] = ("affine", "syn")
        for kind in kinds:
            record: dict[str, Any] = {"subject": sid, "kind": kind}
            with timed() as timing:
                transforms[kind][sid] = register_to_mni(image, kind=kind)
            record["wall"], record["cpu"] = timing.seconds, timing.cpu
            record["ncc"] = transforms[kind][sid].meta["quality"]["ncc"]
            runs.append(record)
            print(f"  mriquant {kind:6s} {sid}: {record['wall']:.1f} s, ncc {record['ncc']:.3f}", flush=True)
    aseg = load_aseg_map()
    pairs = []
    for a, b in itertools.pairwise(ids):
        labels_a, labels_b = read_labels(data / f"{a}_glm.nii.gz"), read_labels(data / f"{b}_glm.nii.gz")
        for kind in ("affine", "syn"):
            warped = transforms[kind][a].compose(transforms[kind][b]).apply(labels_a, interpolation="nearest")
            pairs.append({"pair": f"{a}->{b}", "kind": kind, **scores(warped.array, labels_b.array, aseg)})
    return {"runs": runs, "pairs": pairs, "peak_rss_mb": peak_rss_mb()}


def worker_peer(data: Path, ids: list[str]) -> dict[str, Any]:
    """Direct subject-to-subject ``ants.registration(type_of_transform="SyN")`` with ANTsPy defaults."""
    import ants

    from mriquant.core.ants_bridge import to_ants

    aseg = load_aseg_map()
    runs: list[dict[str, Any]] = []
    pairs = []
    for a, b in itertools.pairwise(ids):
        fixed, moving = (to_ants(read_image(data / f"{s}_SS.nii.gz")) for s in (b, a))
        labels_a, labels_b = read_labels(data / f"{a}_glm.nii.gz"), read_labels(data / f"{b}_glm.nii.gz")
        record: dict[str, Any] = {"pair": f"{a}->{b}", "kind": "peer"}
        with timed() as timing:
            result = ants.registration(fixed=fixed, moving=moving, type_of_transform="SyN")
        record["wall"], record["cpu"] = timing.seconds, timing.cpu
        runs.append(record)
        warped = ants.apply_transforms(
            fixed=fixed,
            moving=to_ants(Image(labels_a.array.astype(np.float32), labels_a.affine)),
            transformlist=result["fwdtransforms"],
            interpolator="nearestNeighbor",
        )
        pred = np.rint(warped.numpy()).astype(np.int32)
        pairs.append({"pair": record["pair"], "kind": "peer", **scores(pred, labels_b.array, aseg)})
        print(f"  ANTs SyN {record['pair']}: {record['wall']:.1f} s", flush=True)
    return {"runs": runs, "pairs": pairs, "peak_rss_mb": peak_rss_mb()}


WORKERS: dict[str, Callable[[Path, list[str]], dict[str, Any]]] = {"mriquant": worker_mriquant, "peer": worker_peer}


# ------------------------------------------------------------------------------------------------------------- report


def run_worker(name: str, data: Path, ids: list[str]) -> dict[str, Any]:
    run = run_script(__file__, "--worker", name, "--data", str(data), "--ids", ",".join(ids), capture_stderr=False)
    for line in run.lines[:-1]:
        print(line)
    return run.report()


def fmt(value: float | None, spec: str = ".3f") -> str:
    return "n/a" if value is None else format(value, spec)


def summary_row(label: str, runs: list[dict[str, Any]], pairs: list[dict[str, Any]], rss: float) -> str:
    wall = float(np.mean([r["wall"] for r in runs]))
    cpu = float(np.mean([r["cpu"] for r in runs]))
    dice = {k: [p[k] for p in pairs if p[k] is not None] for k in ("all", "aseg", "sub15")}
    means = {k: (float(np.mean(v)) if v else None) for k, v in dice.items()}
    return (
        f"| {label:26s} | {len(runs):4d} | {wall:8.1f} | {cpu:9.1f} | {rss:7.0f} | {fmt(means['all']):>8s} | "
        f"{fmt(means['aseg']):>5s} | {fmt(means['sub15']):>5s} |"
    )


def print_tables(mq: dict[str, Any], peer: dict[str, Any]) -> None:
    print("\n| method                     | regs |    s/reg | cpu-s/reg | peak MB | Dice all |  aseg | sub15 |")
    print("|----------------------------|-----:|---------:|----------:|--------:|---------:|------:|------:|")
    for kind, label in (("affine", "mriquant affine (via MNI)"), ("syn", "mriquant SyN (via MNI)")):
        runs = [r for r in mq["runs"] if r["kind"] == kind]
        print(summary_row(label, runs, [p for p in mq["pairs"] if p["kind"] == kind], mq["peak_rss_mb"]))
    print(summary_row("ANTs SyN defaults (direct)", peer["runs"], peer["pairs"], peer["peak_rss_mb"]))
    print("\nper pair (Dice all / aseg / sub15):")
    print("| pair       | mriquant affine       | mriquant SyN          | ANTs SyN direct       |")
    print("|------------|-----------------------|-----------------------|-----------------------|")
    for pair in [p["pair"] for p in peer["pairs"]]:
        cells = []
        for kind, source in (("affine", mq), ("syn", mq), ("peer", peer)):
            row = next(p for p in source["pairs"] if p["pair"] == pair and p["kind"] == kind)
            cells.append(f"{fmt(row['all'])} {fmt(row['aseg'])} {fmt(row['sub15'])}")
        print(f"| {pair} | " + " | ".join(f"{c:21s}" for c in cells) + " |")
    nccs = [r["ncc"] for r in mq["runs"]]
    print(f"\nmriquant quality (ncc in the template brain): min {min(nccs):.3f}, max {max(nccs):.3f}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--data", type=Path, default=MICCAI)
    parser.add_argument("--pairs", type=int, default=5, help="consecutive pairs (subjects = pairs + 1)")
    parser.add_argument("--worker", choices=sorted(WORKERS), help=argparse.SUPPRESS)
    parser.add_argument("--ids", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        print(json.dumps(WORKERS[args.worker](args.data, args.ids.split(","))), flush=True)
        return 0
    ids = subjects(args.data, args.pairs + 1)
    if len(ids) < 2:
        print(f"Expected MICCAI 2012 NNNN_SS.nii.gz files in {args.data}, found {len(ids)}; pass --data.")
        return 2
    print(f"subjects {ids}; load average {os.getloadavg()[0]:.1f}; map {'found' if MAP.is_file() else 'absent'}")
    started = time.perf_counter()
    mq = run_worker("mriquant", args.data, ids)
    peer = run_worker("peer", args.data, ids)
    print_tables(mq, peer)
    print(f"\ntotal {time.perf_counter() - started:.0f} s; load average now {os.getloadavg()[0]:.1f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
