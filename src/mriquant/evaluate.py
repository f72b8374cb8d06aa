"""Compare a label map with a reference: overlap, surface distance and volume per label.

The prediction is compared on the reference's voxel grid. When the two grids
differ (shape, or affine beyond 1e-4), the prediction is resampled onto the
reference's grid by world coordinates with nearest neighbour
(:func:`align_prediction`), and the result says so.

Per label (:class:`LabelMetrics`): Dice, Jaccard, HD95 and ASSD in mm with the
reference grid's true (anisotropic) voxel spacing, the volume of each in mL and
the volume difference. Surfaces are the boundary voxels of a mask (the mask
minus its erosion by the 6-neighbour cross), and surface distances are measured
between voxel centres. The spacing is the length of each voxel axis (the
affine's column norms); the distance transform treats the axes as orthogonal,
which is exact for any rotation and approximate for sheared grids. A label
missing from one of the two maps gets Dice 0 and no distances (``None``, with a
``reason``), never a made-up number.

Label mappings between protocols are TSV files (``source_id<TAB>target_id``,
``#`` comments); the shipped ones are listed by :func:`shipped_maps`, read by
:func:`load_map` and applied by :func:`apply_map`.
"""

from __future__ import annotations

import argparse
import itertools
import json
import logging
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
from scipy import ndimage

from mriquant.core.errors import InputError
from mriquant.core.geometry import resample_like
from mriquant.core.image import Image, LabelImage
from mriquant.core.labels import TISSUES, LabelTable, freesurfer

log = logging.getLogger(__name__)

__all__ = [
    "LabelMetrics",
    "align_prediction",
    "apply_map",
    "command",
    "dice",
    "evaluate_labels",
    "grids_overlap",
    "load_map",
    "render_text",
    "shipped_maps",
    "summarise",
    "surface_distances",
]

#: Largest label value accepted (lookup tables are sized by the largest value present).
MAX_LABEL = 2**20 - 1

#: Voxels added around the union bounding box of a label before the erosion, so the
#: crop border never creates surface voxels that the full volume would not have.
CROP_MARGIN = 1

#: Tolerance (mm) when comparing two grids and when testing fields of view for overlap.
GRID_ATOL_MM = 1e-4

_CROSS = ndimage.generate_binary_structure(3, 1)

Mask = npt.NDArray[np.bool_]
Box = tuple[slice, slice, slice]


@dataclass(frozen=True)
class LabelMetrics:
    """Agreement between a predicted and a reference label map for one label.

    Volumes are measured on the reference grid (after any resampling of the
    prediction). Undefined values are ``None`` and ``reason`` says why.

    Attributes
    ----------
    label : int
        Label value.
    dice : float
        Dice coefficient ``2|P∩T| / (|P| + |T|)``, in [0, 1].
    jaccard : float
        Jaccard index ``|P∩T| / |P∪T|``, in [0, 1].
    hd95_mm : float or None
        95th percentile (numpy's linear interpolation) of the symmetric surface
        distances (prediction->reference and reference->prediction pooled), mm.
    assd_mm : float or None
        Average symmetric surface distance (mean of the same pooled distances), mm.
    volume_pred_ml, volume_truth_ml : float
        Volume of the label in the prediction and in the reference, mL.
    volume_diff_ml : float
        ``volume_pred_ml - volume_truth_ml``, mL.
    volume_diff_percent : float or None
        Volume difference as a percentage of the reference volume.
    reason : str or None
        Why some values are ``None``; ``None`` when every value is defined.

    """

    label: int
    dice: float
    jaccard: float
    hd95_mm: float | None
    assd_mm: float | None
    volume_pred_ml: float
    volume_truth_ml: float
    volume_diff_ml: float
    volume_diff_percent: float | None
    reason: str | None = None

    def as_dict(self, *, digits: int = 6) -> dict[str, Any]:
        """Return the metrics as a JSON-ready dictionary, floats rounded to ``digits``."""
        return {k: round(v, digits) if isinstance(v, float) else v for k, v in asdict(self).items()}


# --------------------------------------------------------------------------- metrics


def dice(a: npt.ArrayLike, b: npt.ArrayLike) -> float:
    """Return the Dice coefficient of two binary masks of the same shape.

    Parameters
    ----------
    a, b : array_like of bool, same shape
        Masks; non-zero values count as inside.

    Returns
    -------
    float
        ``2|a∩b| / (|a| + |b|)`` in [0, 1]; NaN when both masks are empty
        (Dice is undefined there).

    Raises
    ------
    InputError
        If the shapes differ.

    Examples
    --------
    >>> dice([1, 1, 0, 0], [0, 1, 1, 0])
    0.5

    """
    ma, mb = np.asarray(a) != 0, np.asarray(b) != 0
    if ma.shape != mb.shape:
        raise InputError(
            f"Expected two masks of the same shape, found {ma.shape} and {mb.shape}; "
            "resample one onto the other's grid first (mriquant.core.geometry.resample_like)."
        )
    total = int(ma.sum()) + int(mb.sum())
    if total == 0:
        return float("nan")
    return 2.0 * int(np.logical_and(ma, mb).sum()) / total


def _surface(mask: Mask) -> Mask:
    """Boundary voxels of ``mask``: the mask minus its erosion by the 6-neighbour cross."""
    eroded = ndimage.binary_erosion(mask, structure=_CROSS, border_value=0)
    return np.asarray(mask & ~eroded, dtype=np.bool_)


def surface_distances(
    pred: Mask, truth: Mask, *, spacing: Sequence[float] = (1.0, 1.0, 1.0)
) -> npt.NDArray[np.float64]:
    """Return the symmetric surface distances between two non-empty 3D masks, in mm.

    Parameters
    ----------
    pred, truth : numpy.ndarray of bool, shape (I, J, K)
        Masks on the same grid; both must hold at least one voxel.
    spacing : sequence of 3 float
        Voxel size along each array axis, mm (anisotropic spacing is honoured).

    Returns
    -------
    numpy.ndarray, shape (N,), float64
        Distance from every surface voxel of ``pred`` to the nearest surface voxel
        of ``truth``, followed by the same from ``truth`` to ``pred``.

    Examples
    --------
    >>> a = np.zeros((1, 1, 6), bool); a[0, 0, :2] = True
    >>> b = np.zeros((1, 1, 6), bool); b[0, 0, 2:4] = True
    >>> surface_distances(a, b, spacing=(1.0, 1.0, 2.0)).tolist()
    [4.0, 2.0, 2.0, 4.0]

    """
    if pred.shape != truth.shape:
        raise InputError(f"Expected masks of the same shape, found {pred.shape} and {truth.shape}; resample first.")
    if not pred.any() or not truth.any():
        raise InputError(
            f"Expected two non-empty masks, found an empty {'pred' if not pred.any() else 'truth'} mask; "
            "surface distances are undefined, so do not compute them."
        )
    surf_p, surf_t = _surface(pred), _surface(truth)
    sampling = [float(s) for s in spacing]
    to_truth = ndimage.distance_transform_edt(np.logical_not(surf_t), sampling=sampling)
    to_pred = ndimage.distance_transform_edt(np.logical_not(surf_p), sampling=sampling)
    return np.concatenate([to_truth[surf_p], to_pred[surf_t]], dtype=np.float64)


def _union_box(a: Box, b: Box, shape: tuple[int, ...]) -> Box:
    """Bounding box covering ``a`` and ``b``, grown by :data:`CROP_MARGIN` and clipped to ``shape``."""
    lo = [max(min(sa.start, sb.start) - CROP_MARGIN, 0) for sa, sb in zip(a, b, strict=True)]
    hi = [min(max(sa.stop, sb.stop) + CROP_MARGIN, n) for sa, sb, n in zip(a, b, shape, strict=True)]
    return slice(lo[0], hi[0]), slice(lo[1], hi[1]), slice(lo[2], hi[2])


def _check_label_values(array: npt.NDArray[Any], source: str) -> int:
    """Return the largest value of ``array`` after checking it is in ``[0, MAX_LABEL]``."""
    low, high = int(array.min()), int(array.max())
    if low < 0:
        raise InputError(
            f"Expected non-negative label values, found {low} in {source}; "
            "use 0 for background and positive ids for labels."
        )
    if high > MAX_LABEL:
        raise InputError(f"Expected label values up to {MAX_LABEL}, found {high} in {source}; relabel to smaller ids.")
    return high


def _overlap_metrics(label: int, counts: tuple[int, int, int], voxel_ml: float) -> dict[str, Any]:
    """Dice, Jaccard and volumes from the voxel counts ``(|P|, |T|, |P∩T|)``."""
    n_pred, n_truth, n_inter = counts
    vol_pred, vol_truth = n_pred * voxel_ml, n_truth * voxel_ml
    return {
        "label": label,
        "dice": 2.0 * n_inter / (n_pred + n_truth),
        "jaccard": n_inter / (n_pred + n_truth - n_inter),
        "volume_pred_ml": vol_pred,
        "volume_truth_ml": vol_truth,
        "volume_diff_ml": vol_pred - vol_truth,
        "volume_diff_percent": 100.0 * (vol_pred - vol_truth) / vol_truth if n_truth else None,
    }


def _label_metrics(
    label: int,
    counts: tuple[int, int, int],
    distances: npt.NDArray[np.float64] | None,
    voxel_ml: float,
) -> LabelMetrics:
    """Assemble one label's metrics; ``distances`` is ``None`` when a map lacks the label."""
    values = _overlap_metrics(label, counts, voxel_ml)
    if distances is not None:
        return LabelMetrics(
            **values,
            hd95_mm=float(np.percentile(distances, 95)),
            assd_mm=float(distances.mean()),
        )
    reason = (
        "label absent from the prediction; surface distances are undefined"
        if counts[0] == 0
        else "label absent from the reference; surface distances and volume difference % are undefined"
    )
    return LabelMetrics(**values, hd95_mm=None, assd_mm=None, reason=reason)


def _requested_labels(labels: Iterable[int] | None, present: npt.NDArray[np.bool_]) -> list[int]:
    """Labels to evaluate: ``labels`` when given (checked), else every label present."""
    if labels is None:
        return [int(v) for v in np.flatnonzero(present) if v != 0]
    wanted = sorted({int(v) for v in labels})
    if wanted and wanted[0] < 1:
        raise InputError(f"Expected label ids >= 1, found {wanted[0]}; background (0) is not evaluated.")
    return wanted


def evaluate_labels(pred: LabelImage, truth: LabelImage, *, labels: Iterable[int] | None = None) -> list[LabelMetrics]:
    """Compare ``pred`` with ``truth`` label by label.

    ``pred`` is first put on ``truth``'s grid (:func:`align_prediction`). A loop
    runs over labels; every per-voxel step is vectorised, and the surface
    distances of a label are computed in the union bounding box of the label in
    both maps, so large volumes with many labels stay fast.

    Parameters
    ----------
    pred : LabelImage
        Predicted labels, any grid overlapping ``truth`` in world space.
    truth : LabelImage
        Reference labels; metrics are computed on its grid and spacing (mm).
    labels : iterable of int, optional
        Labels to evaluate (>= 1). Default: every non-zero label of either map.
        A label absent from both maps is skipped.

    Returns
    -------
    list of LabelMetrics
        One entry per evaluated label, sorted by label value.

    Raises
    ------
    InputError
        If the fields of view do not overlap, a label value is negative or above
        :data:`MAX_LABEL`, or ``labels`` holds a value below 1.

    Examples
    --------
    >>> a = np.zeros((8, 8, 8), np.int32); a[2:6, 2:6, 2:6] = 1
    >>> img = LabelImage(a, np.eye(4))
    >>> [(m.label, m.dice, m.hd95_mm) for m in evaluate_labels(img, img)]
    [(1, 1.0, 0.0)]

    """
    pred, _ = align_prediction(pred, truth)
    top = max(_check_label_values(pred.array, "the prediction"), _check_label_values(truth.array, "the reference"))
    # int32 holds every accepted value and is what bincount/find_objects take without surprises
    p, t = pred.array.astype(np.int32, copy=False), truth.array.astype(np.int32, copy=False)
    n_pred = np.bincount(p.ravel(), minlength=top + 1)
    n_truth = np.bincount(t.ravel(), minlength=top + 1)
    n_inter = np.bincount(t[p == t], minlength=top + 1)
    boxes_p = ndimage.find_objects(p, max_label=top)
    boxes_t = ndimage.find_objects(t, max_label=top)
    results = []
    with np.errstate(all="raise", under="ignore"):
        for label in _requested_labels(labels, (n_pred > 0) | (n_truth > 0)):
            if label > top or n_pred[label] + n_truth[label] == 0:
                continue
            counts = (int(n_pred[label]), int(n_truth[label]), int(n_inter[label]))
            distances = None
            if counts[0] and counts[1]:
                box = _union_box(boxes_p[label - 1], boxes_t[label - 1], t.shape)
                distances = surface_distances(p[box] == label, t[box] == label, spacing=truth.spacing)
            results.append(_label_metrics(label, counts, distances, truth.voxel_volume_ml))
    return results


def _mean(values: Iterable[float | None]) -> float | None:
    defined = [v for v in values if v is not None]
    return float(np.mean(defined)) if defined else None


def summarise(metrics: Sequence[LabelMetrics]) -> dict[str, Any]:
    """Return the means over labels of a list of :class:`LabelMetrics`.

    Dice and Jaccard are averaged over every label (a label missing from one map
    counts as 0). HD95 and ASSD are averaged over the labels where they are
    defined; ``n_distances_undefined`` says how many were left out. The volume
    difference is summarised as the mean absolute percentage.

    Returns
    -------
    dict
        Keys ``n_labels``, ``dice``, ``jaccard``, ``hd95_mm``, ``assd_mm``,
        ``abs_volume_diff_percent``, ``n_distances_undefined``; means are
        ``None`` for an empty list.

    """
    diffs = [None if m.volume_diff_percent is None else abs(m.volume_diff_percent) for m in metrics]
    return {
        "n_labels": len(metrics),
        "dice": _mean(m.dice for m in metrics),
        "jaccard": _mean(m.jaccard for m in metrics),
        "hd95_mm": _mean(m.hd95_mm for m in metrics),
        "assd_mm": _mean(m.assd_mm for m in metrics),
        "abs_volume_diff_percent": _mean(diffs),
        "n_distances_undefined": sum(m.hd95_mm is None for m in metrics),
    }


# --------------------------------------------------------------------------- grids


def _world_corners(image: Image) -> npt.NDArray[np.float64]:
    """The 8 corners ``(8, 3)`` of the field of view (outer voxel faces) in RAS+ mm."""
    index = np.array(list(itertools.product(*[(-0.5, n - 0.5) for n in image.shape])))
    return np.asarray(index @ image.affine[:3, :3].T + image.affine[:3, 3], dtype=np.float64)


def grids_overlap(a: Image, b: Image) -> bool:
    """Whether the fields of view of ``a`` and ``b`` share a volume in world space.

    Each field of view is the parallelepiped spanned by the outer voxel faces.
    Two convex boxes are disjoint exactly when their projections on one of 15
    axes (3 face normals of each, 9 edge cross products) are disjoint, which is
    what is tested. Boxes that only touch count as not overlapping.

    Examples
    --------
    >>> a = Image(np.zeros((4, 4, 4), np.float32), np.eye(4))
    >>> far = np.eye(4); far[0, 3] = 10.0
    >>> grids_overlap(a, a), grids_overlap(a, Image(a.array, far))
    (True, False)

    """
    ea, eb = a.affine[:3, :3].T, b.affine[:3, :3].T  # rows: world direction of each voxel axis
    roll = [1, 2, 0], [2, 0, 1]
    axes = np.vstack(
        [
            np.cross(ea[roll[0]], ea[roll[1]]),
            np.cross(eb[roll[0]], eb[roll[1]]),
            np.cross(np.repeat(ea, 3, axis=0), np.tile(eb, (3, 1))),
        ]
    )
    norms = np.linalg.norm(axes, axis=1)
    axes = axes[norms > 1e-9] / norms[norms > 1e-9, None]
    pa, pb = _world_corners(a) @ axes.T, _world_corners(b) @ axes.T
    separated = (pa.max(axis=0) <= pb.min(axis=0) + GRID_ATOL_MM) | (pb.max(axis=0) <= pa.min(axis=0) + GRID_ATOL_MM)
    return not bool(separated.any())


def align_prediction(pred: LabelImage, truth: LabelImage) -> tuple[LabelImage, bool]:
    """Put ``pred`` on ``truth``'s voxel grid.

    Parameters
    ----------
    pred, truth : LabelImage
        Label maps in any grids.

    Returns
    -------
    pred_on_truth : LabelImage
        ``pred`` itself when the grids match (same shape, affines within
        :data:`GRID_ATOL_MM`), else ``pred`` resampled onto ``truth``'s grid by
        world coordinates with nearest neighbour; truth voxels outside ``pred``'s
        field of view become 0.
    resampled : bool
        Whether resampling happened.

    Raises
    ------
    InputError
        If the two fields of view do not overlap in world space.

    """
    if truth.same_grid(pred, atol=GRID_ATOL_MM):
        return pred, False
    if not grids_overlap(pred, truth):
        centre_p, centre_t = _world_corners(pred).mean(axis=0), _world_corners(truth).mean(axis=0)
        raise InputError(
            "Expected PRED and TRUTH to overlap in world space, found disjoint fields of view "
            f"(centres {np.round(centre_p, 1).tolist()} and {np.round(centre_t, 1).tolist()} mm RAS); "
            "check that both files are in the same space and their affines are right."
        )
    log.info("resampling the prediction %s onto the reference grid %s", pred.shape, truth.shape)
    return resample_like(pred, truth), True


# --------------------------------------------------------------------------- label maps


def shipped_maps() -> dict[str, Path]:
    """Return the label mappings shipped with mriquant, name -> TSV path.

    Examples
    --------
    >>> sorted(shipped_maps())
    ['miccai2012-to-freesurfer', 'miccai2012-to-tissues']

    """
    folder = resources.files("mriquant").joinpath("data/maps")
    entries = [e for e in folder.iterdir() if e.name.endswith(".tsv")]
    return {e.name.removesuffix(".tsv"): Path(str(e)) for e in sorted(entries, key=lambda e: e.name)}


def _map_path(name_or_path: str | Path) -> Path:
    path = Path(name_or_path)
    if path.is_file():
        return path
    shipped = shipped_maps()
    if str(name_or_path) in shipped:
        return shipped[str(name_or_path)]
    raise InputError(
        f"Expected a label map TSV file or a shipped map name ({', '.join(shipped)}), "
        f"found neither at {name_or_path}; check the path."
    )


def _parse_map_line(line: str, number: int, source: str) -> tuple[int, int] | None:
    """Parse ``source_id<TAB>target_id  # comment``; ``None`` for blank and comment lines."""
    fields = line.split("#", 1)[0].split()
    if not fields:
        return None
    try:
        ids = [int(f) for f in fields]
    except ValueError:
        ids = []
    if len(ids) != 2 or not all(0 <= i <= MAX_LABEL for i in ids):
        raise InputError(
            f"Expected 'source_id<TAB>target_id' (integers 0-{MAX_LABEL}) on line {number} of "
            f"{source}, found {line.strip()!r}; fix or delete the line."
        )
    return ids[0], ids[1]


def load_map(name_or_path: str | Path) -> dict[int, int]:
    """Read a label mapping: a shipped name (see :func:`shipped_maps`) or a TSV path.

    The file holds one ``source_id<TAB>target_id`` pair a line (any whitespace
    works), optionally followed by ``# comment``; blank and ``#`` lines are skipped.

    Returns
    -------
    dict of int to int
        Source label value -> target label value.

    Raises
    ------
    InputError
        If the file is missing or unreadable, a line is not two integer ids, a
        source id is given two different targets, or the file holds no pairs.

    Examples
    --------
    >>> m = load_map("miccai2012-to-freesurfer")
    >>> m[47], m[48], m[59]  # hippocampus R/L, right thalamus
    (53, 17, 49)

    """
    path = _map_path(name_or_path)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise InputError(f"Expected a readable UTF-8 label map, found {path} unreadable ({exc}).") from exc
    mapping: dict[int, int] = {}
    for number, line in enumerate(text.splitlines(), start=1):
        pair = _parse_map_line(line, number, path.name)
        if pair is None:
            continue
        if mapping.setdefault(pair[0], pair[1]) != pair[1]:
            raise InputError(
                f"Expected one target per source id, found {pair[0]} -> {mapping[pair[0]]} and "
                f"-> {pair[1]} in {path.name} (line {number}); keep one of them."
            )
    if not mapping:
        raise InputError(f"Expected 'source_id<TAB>target_id' lines, found none in {path}; fill the file.")
    return mapping


def apply_map(labels: LabelImage, mapping: Mapping[int, int], *, name: str | None = None) -> LabelImage:
    """Relabel ``labels`` through ``mapping``; values absent from ``mapping`` become 0.

    Vectorised with a lookup array indexed by label value.

    Parameters
    ----------
    labels : LabelImage
        Label map with values in ``[0, MAX_LABEL]``.
    mapping : mapping of int to int
        Source value -> target value (targets in ``[0, MAX_LABEL]``). Any value of
        ``labels`` that is not a key, including 0, maps to 0 (background).
    name : str, optional
        Name of the mapping, recorded as ``meta["label_map"]`` of the result.

    Returns
    -------
    LabelImage
        Same grid, int32 values.

    Examples
    --------
    >>> img = LabelImage(np.array([0, 47, 48, 99]).reshape(1, 1, 4), np.eye(4))
    >>> apply_map(img, {47: 53, 48: 17}).array.ravel().tolist()
    [0, 53, 17, 0]

    """
    top = _check_label_values(labels.array, str(labels.meta.get("source", "the label map")))
    lut = np.zeros(top + 1, dtype=np.int32)
    pairs = np.array(sorted(mapping.items()), dtype=np.int64).reshape(-1, 2)
    if pairs.size and (pairs.min() < 0 or pairs[:, 1].max() > MAX_LABEL):
        raise InputError(f"Expected mapping ids in 0-{MAX_LABEL}, found {pairs.min()}-{pairs.max()}; fix the mapping.")
    used = pairs[pairs[:, 0] <= top]
    lut[used[:, 0]] = used[:, 1]
    return labels.with_array(lut[labels.array], label_map=name or "custom")


# --------------------------------------------------------------------------- command line


def _name_table(map_arg: str | Path | None, truth: LabelImage) -> LabelTable | None:
    """Label table for naming rows: by the map's target, else by the reference's ids."""
    target = Path(str(map_arg)).name.removesuffix(".tsv") if map_arg is not None else ""
    if target.endswith("-to-tissues"):
        return TISSUES
    if target.endswith("-to-freesurfer"):
        return freesurfer()
    ids = set(truth.labels)
    if ids and ids <= {1, 2, 3}:
        return TISSUES
    if ids and all(i in freesurfer() for i in ids):
        return freesurfer()
    return None


def _result(
    args: argparse.Namespace, metrics: list[LabelMetrics], resampled: bool, truth: LabelImage
) -> dict[str, Any]:
    """The JSON document of ``mriquant evaluate``."""
    table = _name_table(args.map, truth)
    rows = []
    for m in metrics:
        row = {"label": m.label, "name": table.name_of(m.label) if table else None, **m.as_dict()}
        if row["reason"] is None:
            del row["reason"]
        rows.append(row)
    mean = {k: round(v, 6) if isinstance(v, float) else v for k, v in summarise(metrics).items()}
    return {
        "pred": str(args.pred),
        "truth": str(args.truth),
        "map": None if args.map is None else str(args.map),
        "resampled": resampled,
        "grid": {"shape": list(truth.shape), "spacing_mm": [round(s, 6) for s in truth.spacing]},
        "label_names": table.name if table else None,
        "labels": rows,
        "mean": mean,
    }


#: Width of the name column of the text table (the longest FreeSurfer name shipped is 29 characters).
_NAME_WIDTH = 29


def _fmt(value: float | None, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def _text_row(row: dict[str, Any]) -> str:
    name = (row["name"] or "")[:_NAME_WIDTH]
    return (
        f"{row['label']:>6}  {name:<{_NAME_WIDTH}} {_fmt(row['dice'], '7.4f')} {_fmt(row['jaccard'], '7.4f')} "
        f"{_fmt(row['hd95_mm'], '8.2f')} {_fmt(row['assd_mm'], '8.2f')} "
        f"{_fmt(row['volume_pred_ml'], '10.3f')} {_fmt(row['volume_truth_ml'], '10.3f')} "
        f"{_fmt(row['volume_diff_percent'], '+9.1f')}  {row.get('reason') or ''}"
    ).rstrip()


def render_text(result: dict[str, Any]) -> str:
    """Render the result of ``mriquant evaluate`` as a fixed-width table with a mean line."""
    grid = result["grid"]
    note = (
        "PRED resampled onto it (world coordinates, nearest neighbour)" if result["resampled"] else "PRED already on it"
    )
    lines = [
        f"pred:  {result['pred']}",
        f"truth: {result['truth']}" + (f" (mapped with {result['map']})" if result["map"] else ""),
        f"grid:  {'x'.join(map(str, grid['shape']))} voxels of "
        f"{' x '.join(f'{s:.3g}' for s in grid['spacing_mm'])} mm; {note}",
        "",
        f"{'label':>6}  {'name':<{_NAME_WIDTH}} {'dice':>7} {'jaccard':>7} {'hd95_mm':>8} {'assd_mm':>8} "
        f"{'pred_ml':>10} {'truth_ml':>10} {'diff_%':>9}",
    ]
    lines += [_text_row(row) for row in result["labels"]]
    mean = result["mean"]
    lines.append(
        f"{'mean':>6}  {'(' + str(mean['n_labels']) + ' labels)':<{_NAME_WIDTH}} {_fmt(mean['dice'], '7.4f')} "
        f"{_fmt(mean['jaccard'], '7.4f')} {_fmt(mean['hd95_mm'], '8.2f')} {_fmt(mean['assd_mm'], '8.2f')} "
        f"{'':>10} {'':>10} {_fmt(mean['abs_volume_diff_percent'], '9.1f')}  (|diff| %; distances over "
        f"{mean['n_labels'] - mean['n_distances_undefined']} labels)"
    )
    return "\n".join(lines)


def command(args: argparse.Namespace) -> int:
    """Run ``mriquant evaluate PRED TRUTH [--map FILE] [--labels ID ...] [--json]``.

    ``--map`` (a TSV path or a shipped map name) is applied to TRUTH only, to
    bring a reference drawn in another protocol to PRED's label ids; ``--labels``
    then selects label ids after the mapping. PRED is resampled onto TRUTH's grid
    when the grids differ. Prints a table (or JSON with ``--json``) to stdout.

    Returns
    -------
    int
        0 on success; problems with the inputs raise
        :class:`~mriquant.core.errors.InputError` (the command line exits 2).

    """
    from mriquant.io import read_labels

    pred, truth = read_labels(args.pred), read_labels(args.truth)
    if args.map is not None:
        truth = apply_map(truth, load_map(args.map), name=str(args.map))
    pred, resampled = align_prediction(pred, truth)
    metrics = evaluate_labels(pred, truth, labels=args.labels)
    if not metrics:
        wanted = "the requested labels" if args.labels else "any non-zero label"
        raise InputError(
            f"Expected {wanted} in PRED or TRUTH, found none in {args.pred} and {args.truth}; check --labels and --map."
        )
    result = _result(args, metrics, resampled, truth)
    print(json.dumps(result, indent=2) if args.json else render_text(result))
    return 0
