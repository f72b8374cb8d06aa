"""N4 bias-field correction: mriquant (ANTs N4, defaults) versus SimpleITK's N4 as a peer.

Scans: ``t1/chris_t1.nii.gz`` (real head with neck, 0.88 mm), ``t1/brainweb_normal_t1_pn3_rf20.nii.gz``
(BrainWeb T1, 3 % noise, 20 % bias field, 1 mm) and the mriquant T1 phantom at 1 mm (3 % noise, 20 % bias,
known field). Both methods fit in the same mask (mriquant's foreground mask), with the same shrink factor
(4), iterations (50x50x30x20), convergence (1e-7) and B-spline spacing (180 mm: SimpleITK gets the same
number of control points), and both fields are normalised to geometric mean 1 in the mask and divided
out.

WM masks for the coefficient of variation (sd / mean of WM intensities), never derived from the
corrected images:

* phantom: its WM truth, eroded by one voxel;
* BrainWeb (already in MNI space): the ICBM152 2009a WM probability map (nilearn) >= 0.99, eroded by one
  voxel, resampled by world coordinates;
* chris_t1: the same map brought onto the scan by an ANTs affine registration of the ICBM152 T1.

The phantom row also gives the correlation r of the log fields (estimated vs true) inside the brain.
Each run is a separate process so peak RSS (``resource.getrusage``) is per method.

Usage::

    python bench/n4.py [--data ../shared/data]
"""

from __future__ import annotations

import argparse
import json
import math
import resource
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
from scipy import ndimage

from mriquant.core.geometry import resample_like
from mriquant.core.image import Image, LabelImage
from mriquant.io import read_image
from mriquant.preprocess.bias import N4Options, foreground_mask, from_ants, n4, to_ants

DEFAULT_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
SCANS = ("chris_t1", "brainweb_rf20", "phantom_1mm")
METHODS = ("mriquant", "sitk")


def _nilearn_file(name: str) -> Path:
    import nilearn

    return Path(nilearn.__file__).parent / "datasets" / "data" / name


def _mni_wm(reference: Image, *, register: bool) -> np.ndarray:
    """ICBM152 WM probability >= 0.99 (eroded 1 voxel) on ``reference``'s grid."""
    wm = read_image(_nilearn_file("mni_icbm152_wm_tal_nlin_sym_09a_converted.nii.gz"))
    if register:
        import ants

        template = read_image(_nilearn_file("mni_icbm152_t1_tal_nlin_sym_09a_converted.nii.gz"))
        reg = ants.registration(to_ants(reference), to_ants(template), type_of_transform="Affine")
        moved = ants.apply_transforms(to_ants(reference), to_ants(wm), reg["fwdtransforms"])
        prob = from_ants(moved, reference).array
    else:
        prob = resample_like(wm, reference).array
    return np.asarray(ndimage.binary_erosion(prob >= 0.99 * float(wm.array.max())))


def load_image(scan: str, data: Path) -> Image:
    if scan == "phantom_1mm":
        from mriquant.testing import make_phantom

        return make_phantom(spacing=(1.0, 1.0, 1.0), seed=0, bias=0.2).image
    name = "brainweb_normal_t1_pn3_rf20.nii.gz" if scan == "brainweb_rf20" else "chris_t1.nii.gz"
    return read_image(data / "t1" / name)


def load_truth(scan: str, image: Image) -> tuple[np.ndarray, np.ndarray | None, np.ndarray | None]:
    """WM mask, true field (or None) and brain mask (or None)."""
    if scan == "phantom_1mm":
        from mriquant.testing import make_phantom

        ph = make_phantom(spacing=(1.0, 1.0, 1.0), seed=0, bias=0.2)
        biased = make_phantom(spacing=(1.0, 1.0, 1.0), seed=0, bias=0.2, noise=0.0).image.array
        flat = make_phantom(spacing=(1.0, 1.0, 1.0), seed=0, bias=0.0, noise=0.0).image.array
        true = np.where(flat > 0, biased / np.maximum(flat, 1e-6), 1.0)
        return ndimage.binary_erosion(ph.tissue.array == 3), true, ph.brain_mask.array > 0
    return _mni_wm(image, register=scan == "chris_t1"), None, None


def sitk_n4(image: Image, mask: LabelImage, options: N4Options) -> np.ndarray:
    """SimpleITK N4 on a shrunk copy; the log field is evaluated on the full grid. Returns the field."""
    import SimpleITK as sitk

    full = sitk.GetImageFromArray(np.transpose(np.maximum(image.array, 1e-3), (2, 1, 0)).astype(np.float32))
    full.SetSpacing(image.spacing)
    sitk_mask = sitk.GetImageFromArray(np.transpose(mask.array > 0, (2, 1, 0)).astype(np.uint8))
    sitk_mask.CopyInformation(full)
    shrink = [options.shrink] * 3
    n4_filter = sitk.N4BiasFieldCorrectionImageFilter()
    n4_filter.SetMaximumNumberOfIterations([int(i) for i in options.iterations])
    n4_filter.SetConvergenceThreshold(options.convergence)
    extent = np.asarray(image.shape) * np.asarray(image.spacing)
    spans = [max(1, math.ceil(e / options.spline_distance_mm)) for e in extent]
    n4_filter.SetNumberOfControlPoints([s + 3 for s in spans])  # mesh spans + spline order
    n4_filter.Execute(sitk.Shrink(full, shrink), sitk.Shrink(sitk_mask, shrink))
    log_field = sitk.GetArrayFromImage(n4_filter.GetLogBiasFieldAsImage(full))
    return np.exp(np.transpose(log_field, (2, 1, 0))).astype(np.float32)


def _cov(array: np.ndarray, region: np.ndarray) -> float:
    values = array[region].astype(np.float64)
    return float(values.std() / values.mean())


def run_one(scan: str, method: str, data: Path) -> dict[str, Any]:
    image = load_image(scan, data)
    t0, c0 = time.perf_counter(), time.process_time()
    if method == "mriquant":
        result = n4(image, return_field=True)
        assert result.field is not None
        field = result.field.array
    else:  # same mask (computing it is part of the timing for both)
        mask = foreground_mask(image)
        fit = (mask.array > 0) & (image.array > 0)
        field = sitk_n4(image, mask, N4Options())
        field = field / np.exp(np.log(field[fit]).mean())
    seconds, cpu = time.perf_counter() - t0, time.process_time() - c0
    row = {"scan": scan, "method": method, "seconds": seconds, "cpu": cpu, "voxels": int(np.prod(image.shape))}
    row["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0
    wm, true, brain = load_truth(scan, image)
    corrected = image.array / field
    row |= {"cov_before": _cov(image.array, wm), "cov_after": _cov(corrected, wm), "wm_voxels": int(wm.sum())}
    if true is not None and brain is not None:
        row["r_field"] = float(np.corrcoef(np.log(field[brain]), np.log(true[brain]))[0, 1])
        row["cov_field_left"] = _cov(true / field, wm)
        row["cov_field_true"] = _cov(true, wm)
    return row


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--one", nargs=2, metavar=("SCAN", "METHOD"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.one:
        print(json.dumps(run_one(args.one[0], args.one[1], args.data)))
        return
    header = f"{'scan':<14} {'method':<9} {'seconds':>7} {'cpu s':>6} {'RSS MB':>7} {'WM CoV before':>13} {'after':>7}"
    print(header + f" {'field r':>7} {'field CoV left/true':>19}")
    for scan in SCANS:
        for method in METHODS:
            cmd = [sys.executable, __file__, "--data", str(args.data), "--one", scan, method]
            row = json.loads(subprocess.run(cmd, check=True, capture_output=True, text=True).stdout.splitlines()[-1])
            extra = f" {'':>7} {'':>19}"
            if "r_field" in row:
                extra = f" {row['r_field']:>7.3f} {row['cov_field_left']:>9.4f}/{row['cov_field_true']:.4f}"
            print(
                f"{scan:<14} {method:<9} {row['seconds']:>7.1f} {row['cpu']:>6.1f} {row['peak_rss_mb']:>7.0f} "
                f"{row['cov_before']:>13.4f} {row['cov_after']:>7.4f}" + extra,
                flush=True,
            )


if __name__ == "__main__":
    main()
