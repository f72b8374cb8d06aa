"""N4 bias-field correction: mriquant (ANTs N4, defaults) versus SimpleITK's N4 as a peer.

Scans: ``t1/chris_t1.nii.gz`` (real head with neck, 0.88 mm), ``t1/brainweb_normal_t1_pn3_rf20.nii.gz``
(BrainWeb T1, 3 % noise, 20 % bias field, 1 mm) and the mriquant T1 phantom at 1 mm (3 % noise, 20 % bias,
known field). Both methods fit in the same mask (mriquant's foreground mask, computed inside the timing of
both), with the same shrink factor (4), iterations (50x50x30x20), convergence (1e-7) and B-spline spacing
(180 mm; SimpleITK gets the matching number of control points); both fields are normalised to geometric
mean 1 in the mask and divided out. SimpleITK fits on ``sitk.Shrink`` of the image and evaluates its log
field on the full grid (``GetLogBiasFieldAsImage``), the usual way to run it.

WM masks for the coefficient of variation (sd / mean of the WM intensities):

* phantom: its WM truth, eroded by one voxel;
* BrainWeb (already in MNI space): the ICBM152 2009a WM probability map (nilearn) >= 0.99 of its maximum,
  eroded by one voxel, resampled by world coordinates (independent of every correction);
* chris_t1 (no truth; an affine registration of the ICBM152 template took 2 minutes and missed, the neck
  pulls it): a *proxy*, the voxels within 15 % of the WM mode in *both* corrected images, inside the head
  mask eroded by 12 mm, largest connected component, eroded by one voxel. It is the same mask for every
  column, but it truncates the intensity distribution, so its CoVs are smaller than true WM CoVs.

The phantom rows also give the correlation r of the log fields (estimated vs true) inside the brain and
the CoV of the field left in WM (true / estimated) next to the true field's. Each run is its own process,
so seconds, CPU seconds and peak RSS (``resource.getrusage``, imports included: ~260 MB for ANTsPy) are
per method. Wall-clock seconds depend on what else runs on the machine; CPU seconds less so.

Usage::

    python bench/n4.py [--data ../shared/data]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
from scipy import ndimage

from _harness import DATA, peak_rss_mb, run_script, timed
from mriquant.core.geometry import resample_like
from mriquant.core.image import Image, LabelImage
from mriquant.io import read_image
from mriquant.preprocess.bias import N4Options, foreground_mask, n4
from mriquant.preprocess.normalize import white_matter_mode

SCANS = ("chris_t1", "brainweb_rf20", "phantom_1mm")
METHODS = ("mriquant", "sitk")


def load_image(scan: str, data: Path) -> Image:
    if scan == "phantom_1mm":
        from mriquant.testing import make_phantom

        return make_phantom(spacing=(1.0, 1.0, 1.0), seed=0, bias=0.2).image
    name = "brainweb_normal_t1_pn3_rf20.nii.gz" if scan == "brainweb_rf20" else "chris_t1.nii.gz"
    return read_image(data / "t1" / name)


# --------------------------------------------------------------------------- one run (child process)


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


def run_one(scan: str, method: str, data: Path, out: Path) -> dict[str, Any]:
    image = load_image(scan, data)
    with timed() as timing:
        if method == "mriquant":
            field = n4(image, return_field=True).field
            assert field is not None
            array = field.array
        else:
            mask = foreground_mask(image)
            fit = (mask.array > 0) & (image.array > 0)
            array = sitk_n4(image, mask, N4Options())
            array = array / np.exp(np.log(array[fit]).mean())
    row = {"seconds": timing.seconds, "cpu": timing.cpu}
    row["peak_rss_mb"] = peak_rss_mb()
    np.save(out / f"{scan}_{method}.npy", array.astype(np.float32))
    return row


# --------------------------------------------------------------------------- metrics (parent process)


def _nilearn_file(name: str) -> Path:
    import nilearn

    return Path(nilearn.__file__).parent / "datasets" / "data" / name


def _cov(array: np.ndarray, region: np.ndarray) -> float:
    values = array[region].astype(np.float64)
    return float(values.std() / values.mean())


def _largest(mask: np.ndarray) -> np.ndarray:
    labels, count = ndimage.label(mask)
    if count == 0:
        return mask
    return np.asarray(labels == 1 + int(np.argmax(np.bincount(labels.ravel())[1:])))


def consensus_wm(image: Image, corrected: list[np.ndarray]) -> np.ndarray:
    """WM proxy: within 15 % of the WM mode in every corrected image, deep inside the head."""
    head = foreground_mask(image).array > 0
    inner = ndimage.distance_transform_edt(head, sampling=image.spacing) > 12.0
    wm = inner.copy()
    for array in corrected:
        mode = white_matter_mode(array[inner].astype(np.float64))
        wm &= np.abs(array - mode) < 0.15 * mode
    return np.asarray(ndimage.binary_erosion(_largest(wm)))


def mni_wm(image: Image) -> np.ndarray:
    """ICBM152 WM probability >= 0.99 of its maximum, eroded by one voxel, on ``image``'s grid."""
    wm = read_image(_nilearn_file("mni_icbm152_wm_tal_nlin_sym_09a_converted.nii.gz"))
    prob = resample_like(wm, image).array
    return np.asarray(ndimage.binary_erosion(prob >= 0.99 * float(wm.array.max())))


def phantom_truth() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """WM mask (eroded), true field and brain mask of the 1 mm phantom."""
    from mriquant.testing import make_phantom

    ph = make_phantom(spacing=(1.0, 1.0, 1.0), seed=0, bias=0.2, noise=0.0)
    flat = make_phantom(spacing=(1.0, 1.0, 1.0), seed=0, bias=0.0, noise=0.0).image.array
    true = np.where(flat > 0, ph.image.array / np.maximum(flat, 1e-6), 1.0)
    return np.asarray(ndimage.binary_erosion(ph.tissue.array == 3)), true, ph.brain_mask.array > 0


def metrics(scan: str, image: Image, fields: dict[str, np.ndarray]) -> dict[str, dict[str, float]]:
    corrected = {m: image.array / f for m, f in fields.items()}
    true = brain = None
    if scan == "phantom_1mm":
        wm, true, brain = phantom_truth()
    elif scan == "brainweb_rf20":
        wm = mni_wm(image)
    else:
        wm = consensus_wm(image, list(corrected.values()))
    rows = {}
    for method, field in fields.items():
        row = {"before": _cov(image.array, wm), "after": _cov(corrected[method], wm), "wm_voxels": float(wm.sum())}
        if true is not None and brain is not None:
            row["r"] = float(np.corrcoef(np.log(field[brain]), np.log(true[brain]))[0, 1])
            row["left"], row["true"] = _cov(true / field, wm), _cov(true, wm)
        rows[method] = row
    return rows


def _run_child(scan: str, method: str, data: Path, out: str) -> dict[str, Any]:
    return run_script(__file__, "--data", str(data), "--one", scan, method, out).report()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=DATA)
    parser.add_argument("--one", nargs=3, metavar=("SCAN", "METHOD", "OUT"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.one:
        print(json.dumps(run_one(args.one[0], args.one[1], args.data, Path(args.one[2]))))
        return
    parent_mb = peak_rss_mb()
    print(f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f} at start; this process {parent_mb:.0f} MB")
    header = f"{'scan':<14} {'method':<9} {'seconds':>7} {'cpu s':>6} {'RSS MB':>7} {'WM CoV before':>13} {'after':>7}"
    print(header + f" {'field r':>7} {'WM field CoV left/true':>22}")
    with tempfile.TemporaryDirectory() as tmp:
        # every run first, while this process is small: Linux keeps ru_maxrss across fork + exec
        timing = {(scan, method): _run_child(scan, method, args.data, tmp) for scan in SCANS for method in METHODS}
        for scan in SCANS:
            fields = {method: np.load(Path(tmp) / f"{scan}_{method}.npy") for method in METHODS}
            for method, m in metrics(scan, load_image(scan, args.data), fields).items():
                t = timing[scan, method]
                extra = f" {m['r']:>7.3f} {m['left']:>12.4f}/{m['true']:.4f}" if "r" in m else ""
                print(
                    f"{scan:<14} {method:<9} {t['seconds']:>7.1f} {t['cpu']:>6.1f} {t['peak_rss_mb']:>7.0f} "
                    f"{m['before']:>13.4f} {m['after']:>7.4f}" + extra,
                    flush=True,
                )
    print(f"load average {os.getloadavg()[0]:.1f} at the end")


if __name__ == "__main__":
    main()
