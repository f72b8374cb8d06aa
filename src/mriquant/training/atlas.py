r"""Build an atlas for ``segment --method atlas`` from labelled scans or from label maps alone.

Usage::

    # labelled scans (e.g. MICCAI 2012 training: NNNN_SS.nii.gz + NNNN_glm.nii.gz, Neuromorphometrics ids)
    python -m mriquant.segment.atlas_build --pairs DIR --image-suffix _SS.nii.gz --label-suffix _glm.nii.gz \\
        --map miccai2012-to-freesurfer --name miccai2012 --licence "CC BY-NC 3.0" --out miccai.npz

    # label maps alone (e.g. SynthSeg's training maps): a T1-like image is rendered from the labels
    python -m mriquant.segment.atlas_build --label-maps 'DIR/training_seg_*.nii.gz' --name synthseg20 \\
        --licence Apache-2.0 --out synthseg20.npz --priors-only

Each member is registered to MNI152 (affine + SyN, a minute or two on two cores) and cached in ``--cache``,
so an interrupted build resumes where it stopped.
"""

from __future__ import annotations

import argparse
import glob
import sys
import time
from pathlib import Path

import numpy as np
import numpy.typing as npt
from scipy import ndimage

from mriquant.core.errors import MriquantError
from mriquant.core.image import Image, LabelImage
from mriquant.segment.atlas_data import Member, build_atlas, member_from_pair

#: Rough T1-weighted intensities (cerebral WM = 1) used to render an image from a FreeSurfer label map,
#: only so that it can be registered to the T1 template; ids not listed (non-brain) render as 0.
T1_LIKE: dict[int, float] = {
    2: 1.0, 41: 1.0, 7: 1.0, 46: 1.0, 16: 0.9, 28: 0.88, 60: 0.88, 10: 0.85, 49: 0.85, 13: 0.9, 52: 0.9,
    12: 0.75, 51: 0.75, 11: 0.72, 50: 0.72, 26: 0.72, 58: 0.72, 17: 0.66, 53: 0.66, 18: 0.68, 54: 0.68,
    3: 0.62, 42: 0.62, 8: 0.66, 47: 0.66, 4: 0.25, 43: 0.25, 5: 0.25, 44: 0.25, 14: 0.25, 15: 0.25, 24: 0.25,
}  # fmt: skip


def render_t1(labels: LabelImage, sigma_mm: float = 0.7) -> Image:
    """A smooth T1-like image of a FreeSurfer label map (for registration only)."""
    lookup = np.zeros(int(labels.array.max()) + 1, np.float32)
    for label, value in T1_LIKE.items():
        if label < lookup.size:
            lookup[label] = value
    rendered = lookup[np.clip(labels.array, 0, None)]
    spacing = np.sqrt((labels.affine[:3, :3] ** 2).sum(axis=0))
    smooth: npt.NDArray[np.float32] = ndimage.gaussian_filter(rendered, sigma_mm / spacing).astype(np.float32)
    return Image(smooth, labels.affine.copy(), {"source": "rendered"})


def _brain_only(labels: LabelImage) -> LabelImage:
    """Keep the ids the T1 rendering knows (the brain); the rest becomes 0."""
    keep = np.isin(labels.array, list(T1_LIKE))
    return labels.with_array(np.where(keep, labels.array, 0).astype(np.int32))


def _pairs(args: argparse.Namespace) -> list[tuple[str, Path, Path | None]]:
    if args.label_maps:
        return [(Path(p).name.split(".")[0], Path(p), None) for p in sorted(glob.glob(args.label_maps))]
    folder = Path(args.pairs)
    out: list[tuple[str, Path, Path | None]] = []
    for image in sorted(folder.glob(f"*{args.image_suffix}")):
        stem = image.name[: -len(args.image_suffix)]
        out.append((stem, folder / f"{stem}{args.label_suffix}", image))
    return out


def _load_member(name: str, labels_path: Path, image_path: Path | None, mapping: dict[int, int] | None) -> Member:
    from mriquant.evaluate import apply_map
    from mriquant.io import read_image, read_labels

    labels = read_labels(labels_path)
    if mapping is not None:
        labels = apply_map(labels, mapping)
    labels = _brain_only(labels)
    image = read_image(image_path) if image_path is not None else render_t1(labels)
    return member_from_pair(name, image, labels)


def _cached_member(cache: Path, name: str, labels_path: Path, image_path: Path | None,
                   mapping: dict[int, int] | None) -> Member:  # fmt: skip
    path = cache / f"{name}.npz"
    if path.exists():
        with np.load(path) as data:
            return Member(name, data["labels"], data["intensity"])
    member = _load_member(name, labels_path, image_path, mapping)
    tmp = cache / f"{name}.tmp.npz"
    np.savez_compressed(tmp, labels=member.labels.astype(np.int16), intensity=member.intensity.astype(np.float16))
    tmp.replace(path)
    return member


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """Command-line options."""
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument("--pairs", help="folder of image + label files")
    source.add_argument("--label-maps", help="glob of label maps (no images)")
    p.add_argument("--image-suffix", default="_SS.nii.gz")
    p.add_argument("--label-suffix", default="_glm.nii.gz")
    p.add_argument("--map", help="label map to FreeSurfer ids (a shipped map name or a TSV)")
    p.add_argument("--out", required=True, type=Path)
    p.add_argument("--name", required=True)
    p.add_argument("--licence", required=True, help="licence of the source data (recorded in the atlas)")
    p.add_argument("--source", default="", help="where the source data comes from (recorded)")
    p.add_argument("--resolution", type=int, default=2, help="prior grid spacing in mm (integer)")
    p.add_argument("--priors-only", action="store_true", help="do not store the member library")
    p.add_argument("--cache", type=Path, default=Path("/tmp/mriquant-atlas-cache"))
    p.add_argument("--threads", type=int, default=2)
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``python -m mriquant.segment.atlas_build``."""
    import os

    args = parse_args(argv)
    os.environ.setdefault("ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS", str(args.threads))
    from mriquant.evaluate import load_map

    mapping = load_map(args.map) if args.map else None
    cache = args.cache / args.name
    cache.mkdir(parents=True, exist_ok=True)
    members = []
    try:
        for name, labels_path, image_path in _pairs(args):
            t0 = time.perf_counter()
            members.append(_cached_member(cache, name, labels_path, image_path, mapping))
            print(f"{name}: {time.perf_counter() - t0:.1f} s", flush=True)
        atlas = build_atlas(members, name=args.name, source=args.source, licence=args.licence,
                            resolution_mm=args.resolution, progress=print)  # fmt: skip
        atlas.save(args.out, library=not args.priors_only)
    except MriquantError as exc:
        print(str(exc), file=sys.stderr)
        return 2
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
