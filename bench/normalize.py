"""Intensity normalisation across subjects: none / z-score / WM peak / Nyúl (leave-one-out).

For the 15 MICCAI 2012 training T1 scans (skull-stripped ``NNNN_SS`` with ``NNNN_mask``; tissue truth
``NNNN_classified``: 2 GM, 3 WM) this prints, after each normalisation, the spread across subjects of the
per-subject WM and GM mean intensities:

* ``CoV``: sd / mean across subjects (the scale-free spread; undefined for z-scores, whose zero is
  arbitrary, so printed as ``n/a`` there);
* ``sd/gap``: sd across subjects divided by the mean WM-GM gap, comparable across every method.

Nyúl landmarks are learned leave-one-out: from the 14 other subjects for each subject.

Usage::

    python bench/normalize.py [--data ../shared/data/miccai2012/train]
    python bench/normalize.py --write-landmarks src/mriquant/data/nyul/t1.json   # regenerate shipped ones
"""

from __future__ import annotations

import argparse
import dataclasses
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from _harness import MICCAI
from mriquant.core.image import Image, LabelImage
from mriquant.io import read_image, read_labels
from mriquant.preprocess.normalize import learn_nyul, learn_nyul_from_folder, nyul, wm_peak, zscore

EXTRA = {
    "data": "MICCAI 2012 Multi-Atlas Labeling challenge training set (OASIS T1 scans, 1 mm, skull-stripped; "
    "brain masks from the Neuromorphometrics manual labels), as distributed in github muschellij2/malf.templates "
    "@ab259ce inst/extdata/. Only these summary numbers (mean standardised percentiles) are stored here.",
    "data_licence": "CC BY-NC 3.0 (OASIS data use terms; labels by Neuromorphometrics, Inc.)",
    "folder": "FOLDER = the project's ../shared/data/miccai2012/train; PATH = src/mriquant/data/nyul/t1.json",
    "preprocessing": "none: the scans are used as distributed (already gain-field corrected by OASIS)",
    "script": "python bench/normalize.py --write-landmarks src/mriquant/data/nyul/t1.json",
}


@dataclasses.dataclass
class Subject:
    sid: str
    image: Image
    mask: LabelImage
    tissue: np.ndarray


def load(folder: Path) -> list[Subject]:
    ids = sorted(p.name.split("_")[0] for p in folder.glob("*_SS.nii.gz"))
    return [
        Subject(
            i,
            read_image(folder / f"{i}_SS.nii.gz"),
            read_labels(folder / f"{i}_mask.nii.gz"),
            read_labels(folder / f"{i}_classified.nii.gz").array,
        )
        for i in ids
    ]


def methods(subjects: list[Subject]) -> dict[str, Callable[[int], Image]]:
    def nyul_loo(k: int) -> Image:
        others = [s for j, s in enumerate(subjects) if j != k]
        landmarks = learn_nyul([s.image for s in others], [s.mask for s in others])
        return nyul(subjects[k].image, subjects[k].mask, landmarks)

    return {
        "none": lambda k: subjects[k].image,
        "zscore": lambda k: zscore(subjects[k].image, subjects[k].mask),
        "wm-peak": lambda k: wm_peak(subjects[k].image, subjects[k].mask, target=110.0),
        "nyul (LOO)": nyul_loo,
    }


def spread(values: np.ndarray, gap: float, *, has_zero: bool) -> tuple[str, str]:
    cov = f"{values.std() / values.mean():.3f}" if has_zero else "n/a"
    return cov, f"{values.std() / gap:.3f}"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=MICCAI)
    parser.add_argument("--write-landmarks", type=Path, default=None)
    args = parser.parse_args(argv)
    if args.write_landmarks is not None:
        landmarks = learn_nyul_from_folder(args.data)
        dataclasses.replace(landmarks, extra=EXTRA).save(args.write_landmarks)
        print(f"wrote {args.write_landmarks} from {landmarks.n_images} scans")
        return
    t0 = time.perf_counter()
    subjects = load(args.data)
    print(f"{len(subjects)} MICCAI 2012 training T1 scans from {args.data}")
    header = f"{'method':<12} {'WM CoV':>7} {'GM CoV':>7} {'WM sd/gap':>10} {'GM sd/gap':>10}"
    print(header + f"  {'WM mean':>9} {'GM mean':>9}")
    for name, apply in methods(subjects).items():
        wm, gm = np.empty(len(subjects)), np.empty(len(subjects))
        for k, subject in enumerate(subjects):
            out = apply(k).array
            wm[k], gm[k] = out[subject.tissue == 3].mean(), out[subject.tissue == 2].mean()
        gap = float((wm - gm).mean())
        wm_cov, wm_gap = spread(wm, gap, has_zero=name != "zscore")
        gm_cov, gm_gap = spread(gm, gap, has_zero=name != "zscore")
        print(f"{name:<12} {wm_cov:>7} {gm_cov:>7} {wm_gap:>10} {gm_gap:>10}  {wm.mean():>9.3f} {gm.mean():>9.3f}")
    print(f"total {time.perf_counter() - t0:.1f} s")


if __name__ == "__main__":
    main()
