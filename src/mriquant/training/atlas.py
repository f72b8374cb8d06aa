r"""Build an atlas for ``segment --method atlas`` from labelled scans or from label maps alone.

Usage::

    # labelled scans (e.g. MICCAI 2012 training: NNNN_SS.nii.gz + NNNN_glm.nii.gz, Neuromorphometrics ids)
    python -m mriquant.training.atlas --pairs DIR --image-suffix _SS.nii.gz --label-suffix _glm.nii.gz \\
        --map miccai2012-to-freesurfer --name miccai2012 --licence "CC BY-NC 3.0" --out miccai.npz

    # label maps alone (e.g. SynthSeg's training maps): a T1-like image is rendered from the labels
    python -m mriquant.training.atlas --label-maps 'DIR/training_seg_*.nii.gz' --name synthseg20 \\
        --licence Apache-2.0 --out synthseg20.npz --priors-only

Each member is registered to MNI152 (affine + SyN, a minute or two on two cores) and cached in ``--cache``,
so an interrupted build resumes where it stopped. The result is a :class:`mriquant.models.atlas.Atlas` file
(:meth:`~mriquant.models.atlas.Atlas.save`).
"""

from __future__ import annotations

import argparse
import glob
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
from scipy import ndimage

from mriquant.core.errors import InputError, MriquantError
from mriquant.core.image import Image, LabelImage
from mriquant.models.atlas import CEREBRAL_WM, Atlas, priors_from_maps
from mriquant.simulate.render import T1_LIKE, render_t1

__all__ = ["Member", "build_atlas", "main", "member_from_pair", "normalise_t1", "parse_args", "template_box"]


def _brain_only(labels: LabelImage) -> LabelImage:
    """Keep the ids the T1 rendering knows (the brain); the rest becomes 0."""
    keep = np.isin(labels.array, list(T1_LIKE))
    return labels.with_array(np.where(keep, labels.array, 0).astype(np.int32))


@dataclass(frozen=True)
class Member:
    """One atlas subject on the template's 1 mm box.

    Attributes
    ----------
    name : str
        Subject identifier.
    labels : numpy.ndarray, int32, shape (X, Y, Z)
        FreeSurfer ids warped to the template box (nearest label-wise interpolation).
    intensity : numpy.ndarray, float32, shape (X, Y, Z)
        The subject's image warped to the box, divided by its cerebral white-matter mean.
    """

    name: str
    labels: npt.NDArray[np.int32]
    intensity: npt.NDArray[np.float32]



def normalise_t1(image: npt.NDArray[np.float32], labels: npt.NDArray[Any]) -> npt.NDArray[np.float32]:
    """Divide ``image`` by its mean over cerebral white matter (labels 2, 41), the library's common scale."""
    wm = np.isin(labels, CEREBRAL_WM)
    if not np.any(wm):
        raise InputError("Expected cerebral white matter (FreeSurfer 2/41) in an atlas label map, found none.")
    return (image / np.float32(np.mean(image[wm]))).astype(np.float32)


def template_box(margin_mm: float = 6.0, multiple: int = 2) -> tuple[tuple[slice, ...], npt.NDArray[np.float64]]:
    """The box of the 1 mm MNI template grid around its brain mask, and the box's affine.

    The box's sizes are multiples of ``multiple`` so it block-averages exactly to coarser grids.
    """
    from mriquant.preprocess.template import template_brain_mask

    mask = template_brain_mask(resolution_mm=1.0)
    found = ndimage.find_objects(mask.array.astype(np.int8))[0]
    assert found is not None  # the template mask is not empty
    box = []
    for axis, sl in enumerate(found):
        start = max(0, int(sl.start - margin_mm))
        stop = min(mask.shape[axis], int(sl.stop + margin_mm))
        stop = start + (stop - start) // multiple * multiple
        box.append(slice(start, stop))
    affine = mask.affine.copy()
    affine[:3, 3] = mask.affine[:3, :3] @ np.array([s.start for s in box], float) + mask.affine[:3, 3]
    return tuple(box), affine


def member_from_pair(name: str, image: Image, labels: LabelImage) -> Member:
    """Register one (image, FreeSurfer label map) pair to MNI152 (affine + SyN) and warp it to the box.

    The brain (non-zero labels) is registered to the brain template. Labels are warped with ANTs'
    label-wise linear interpolation; the image linearly, then divided by its white-matter mean.
    """
    from mriquant.preprocess.register import register_to_mni

    if not labels.same_grid(image):
        raise InputError(
            f"Expected the label map of {name} on its image's grid, found {labels.shape} vs {image.shape}."
        )
    brain = LabelImage((labels.array > 0).astype(np.uint8), labels.affine.copy())
    tx = register_to_mni(image, mask=brain, kind="syn")
    box, _ = template_box()
    warped_labels = tx.apply(labels, interpolation="label").array[box].astype(np.int32)
    masked = image.with_array(np.where(labels.array > 0, image.array, 0).astype(np.float32))
    warped_image = tx.apply(masked).array[box].astype(np.float32)
    return Member(name, warped_labels, normalise_t1(warped_image, warped_labels))


def build_atlas(
    members: Sequence[Member],
    *,
    name: str,
    source: str,
    licence: str,
    resolution_mm: int = 2,
    labels: Sequence[int] | None = None,
    progress: Callable[[str], None] | None = None,
) -> Atlas:
    """Assemble an atlas from members already on the template box.

    Parameters
    ----------
    members : sequence of Member
        From :func:`member_from_pair`.
    name, source, licence : str
        Provenance recorded in the atlas.
    resolution_mm : int
        Prior grid spacing (an integer multiple of the 1 mm library grid).
    labels : sequence of int, optional
        FreeSurfer ids to keep (default: every non-zero id found).
    progress : callable, optional
        Receives one line per step.
    """
    if not members:
        raise InputError("Expected at least one atlas member, found none.")
    found = np.unique(np.concatenate([np.unique(m.labels) for m in members]))
    keep = np.array(sorted(set(labels) if labels is not None else {int(v) for v in found if v != 0}), np.int32)
    lookup = np.zeros(int(max(found.max(), keep.max())) + 1, np.uint8)
    lookup[keep] = np.arange(1, len(keep) + 1, dtype=np.uint8)
    maps = np.stack([lookup[m.labels] for m in members])
    intensities = np.stack([m.intensity for m in members]).astype(np.float16)
    _, box_affine = template_box()
    priors, affine = priors_from_maps(maps, len(keep), box_affine, int(resolution_mm))
    if progress:
        progress(f"atlas {name}: {len(members)} members, {len(keep)} labels, priors {priors.shape[1:]}")
    meta = {"name": name, "members": [m.name for m in members], "source": source, "licence": licence,
            "resolution_mm": int(resolution_mm)}  # fmt: skip
    return Atlas(keep, priors, affine, maps, intensities, box_affine, meta)


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
    """Entry point of ``python -m mriquant.training.atlas``."""
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
