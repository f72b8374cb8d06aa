"""Volumes: per label in mL, tissue totals, intracranial volume, normalised values, asymmetry.

Every value is measured from the label maps on the native grid (voxel count times voxel
volume); where posteriors exist, a partial-volume-aware volume (sum of probabilities times
voxel volume) is reported beside it. An undefined value is ``None`` with a reason, never 0.

Intracranial volume
-------------------
``etiv_ml`` is the volume of the brain mask, which by mriquant's convention (the BrainWeb
and HD-BET one) holds grey matter, white matter and the CSF inside the dura: it measures the
intracranial cavity directly rather than estimating it from a registration's scale factor as
FreeSurfer's eTIV does (Buckner et al. 2004). When a transform to MNI152 is known,
``etiv_affine_ml`` gives that atlas-scaling estimate too (the template's intracranial volume
divided by the determinant of the subject-to-template linear part), as a cross-check.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from mriquant.core.image import Image, LabelImage
from mriquant.core.labels import BILATERAL_PAIRS, TISSUES, LabelTable, freesurfer, structure_classes

#: FreeSurfer ids counted as ventricles (lateral, inferior lateral, 3rd, 4th, 5th).
VENTRICLES = (4, 43, 5, 44, 14, 15, 72)
#: FreeSurfer ids that are not brain parenchyma (CSF spaces, vessels, choroid plexus).
NON_PARENCHYMA = (*VENTRICLES, 24, 30, 62, 31, 63)


@dataclass(frozen=True)
class LabelVolume:
    """Volume of one label.

    Attributes
    ----------
    label : int
        Voxel value.
    name : str
        Label name.
    volume_ml : float
        Voxel count times voxel volume, in mL.
    volume_pv_ml : float or None
        Sum of the label's probability times voxel volume, in mL (None without posteriors).
    fraction_of_etiv : float or None
        ``volume_ml / etiv_ml`` (None when the intracranial volume is unknown).
    voxels : int
        Number of voxels.
    """

    label: int
    name: str
    volume_ml: float
    volume_pv_ml: float | None
    fraction_of_etiv: float | None
    voxels: int

    def as_dict(self) -> dict[str, Any]:
        """JSON-serialisable dictionary."""
        return asdict(self)


def label_counts(labels: LabelImage) -> dict[int, int]:
    """Voxel count of every non-zero label (vectorised with ``np.unique``)."""
    values, counts = np.unique(labels.array, return_counts=True)
    return {int(v): int(c) for v, c in zip(values, counts, strict=True) if v != 0}


def _pv_volume(probability: Image | None, voxel_ml: float) -> float | None:
    if probability is None:
        return None
    return float(np.sum(probability.array, dtype=np.float64) * voxel_ml)


def _neighbour_offsets(spacing: npt.NDArray[np.float64]) -> npt.NDArray[np.int64]:
    """The 26 neighbour offsets, nearest first (physical distance; ties in a fixed order)."""
    grid = np.array([(i, j, k) for i in (-1, 0, 1) for j in (-1, 0, 1) for k in (-1, 0, 1) if (i, j, k) != (0, 0, 0)])
    order = np.argsort(np.linalg.norm(grid * spacing, axis=1), kind="stable")
    return np.asarray(grid[order], dtype=np.int64)


def _credited(
    labels: npt.NDArray[Any], own: npt.NDArray[np.bool_], probability: npt.NDArray[Any], spacing: npt.NDArray[Any]
) -> npt.NDArray[np.float64]:
    """Probability summed per label id, over a label's own voxels and the rim around them.

    A rim voxel is credited to the nearest of its 26 neighbours that is a structure of the class.
    """
    from scipy import ndimage

    size = int(labels.max(initial=0)) + 1
    sums = np.bincount(labels[own].ravel(), weights=probability[own].ravel(), minlength=size)
    rim = ndimage.binary_dilation(own, structure=np.ones((3, 3, 3), bool)) & ~own & (probability > 0)
    where = np.argwhere(rim)
    credited = np.zeros(len(where), labels.dtype)
    todo = np.ones(len(where), bool)
    limit = np.asarray(labels.shape) - 1
    for offset in _neighbour_offsets(spacing):
        pending = np.flatnonzero(todo)
        if pending.size == 0:
            break
        neighbour = tuple(np.clip(where[pending] + offset, 0, limit).T)
        hit = own[neighbour]
        credited[pending[hit]] = labels[neighbour][hit]
        todo[pending[hit]] = False
    sums += np.bincount(credited, weights=probability[rim], minlength=size)[:size]
    return np.asarray(sums, dtype=np.float64)


def structure_pv_volumes(dseg: LabelImage, probabilities: dict[str, Image]) -> dict[int, float]:
    """Partial-volume-aware volume (mL) of every structure that measures a tissue class.

    Each voxel's probability of class ``c`` (CSF, GM, WM) counts for its own structure when that structure's
    class is ``c`` (:data:`mriquant.core.labels.STRUCTURE_TISSUE`), and otherwise for the nearest of its 26
    neighbours that is a structure of class ``c``, if any. So a cortex measures the grey matter in and at its
    voxels and none of the sulcal CSF, and the grey-matter structures together never exceed the
    partial-volume GM.

    Parameters
    ----------
    dseg : LabelImage
        FreeSurfer-id structure map, shape ``(I, J, K)``.
    probabilities : dict of str to Image
        Tissue posteriors keyed ``"CSF"``, ``"GM"``, ``"WM"`` on ``dseg``'s grid (missing classes are skipped).

    Returns
    -------
    dict of int to float
        mL per structure id (ids of no class are absent).
    """
    from mriquant.core.geometry import bounding_box

    spacing = np.sqrt((dseg.affine[:3, :3] ** 2).sum(axis=0))
    classes = structure_classes(dseg.array)
    out: dict[int, float] = {}
    for tissue in TISSUES:
        probability = probabilities.get(tissue.name)
        if probability is None or not (classes == tissue.id).any():
            continue
        box = bounding_box(classes == tissue.id, margin=1)
        own = classes[box] == tissue.id
        sums = _credited(dseg.array[box], own, probability.array[box], spacing)
        out.update({int(i): float(sums[i]) * dseg.voxel_volume_ml for i in np.unique(dseg.array[box][own])})
    return out


def label_volumes(
    labels: LabelImage,
    *,
    table: LabelTable,
    probabilities: dict[str, Image] | None = None,
    pv_ml: dict[int, float] | None = None,
    etiv_ml: float | None = None,
) -> list[LabelVolume]:
    """Volume of every label present in ``labels``.

    Parameters
    ----------
    labels : LabelImage
        Tissue or structure map.
    table : LabelTable
        Names of the labels.
    probabilities : dict of str to Image, optional
        Posteriors keyed by label name, for the partial-volume column.
    pv_ml : dict of int to float, optional
        Partial-volume volumes by label id, when computed otherwise (:func:`structure_pv_volumes`).
    etiv_ml : float, optional
        Intracranial volume for the normalised column.

    Returns
    -------
    list of LabelVolume
        Sorted by label value.
    """
    voxel_ml = labels.voxel_volume_ml
    probabilities = probabilities or {}
    rows = []
    for label, count in sorted(label_counts(labels).items()):
        name = table.name_of(label)
        volume = count * voxel_ml
        rows.append(
            LabelVolume(
                label,
                name,
                round(volume, 4),
                _round(pv_ml[label] if pv_ml and label in pv_ml else _pv_volume(probabilities.get(name), voxel_ml)),
                None if not etiv_ml else round(volume / etiv_ml, 6),
                count,
            )
        )
    return rows


def _round(value: float | None, digits: int = 4) -> float | None:
    return None if value is None else round(value, digits)


def asymmetry_index(left: float, right: float) -> float | None:
    """Left/right asymmetry index ``(L - R) / ((L + R) / 2)``; None when both are 0."""
    mean = (left + right) / 2.0
    return None if mean == 0 else (left - right) / mean


def asymmetries(volumes: list[LabelVolume]) -> list[dict[str, Any]]:
    """Asymmetry index of every bilateral FreeSurfer pair present in ``volumes``."""
    by_label = {v.label: v for v in volumes}
    rows = []
    for left, right in BILATERAL_PAIRS:
        if left in by_label or right in by_label:
            lv = by_label[left].volume_ml if left in by_label else 0.0
            rv = by_label[right].volume_ml if right in by_label else 0.0
            name = freesurfer().name_of(left).removeprefix("Left-")
            index = asymmetry_index(lv, rv)
            rows.append(
                {
                    "structure": name,
                    "left_label": left,
                    "right_label": right,
                    "left_ml": lv,
                    "right_ml": rv,
                    "asymmetry_index": None if index is None else round(index, 4),
                    **({"reason": "both sides are empty"} if index is None else {}),
                }
            )
    return rows


def tissue_totals(tissue: LabelImage, *, etiv_ml: float | None) -> dict[str, Any]:
    """CSF, GM, WM and parenchyma (GM + WM) volumes in mL, with brain parenchymal fraction.

    The brain parenchymal fraction is ``(GM + WM) / etiv_ml`` (None without an intracranial volume).
    """
    counts = label_counts(tissue)
    voxel_ml = tissue.voxel_volume_ml
    totals: dict[str, Any] = {t.name.lower() + "_ml": round(counts.get(t.id, 0) * voxel_ml, 4) for t in TISSUES}
    parenchyma = totals["gm_ml"] + totals["wm_ml"]
    totals["parenchyma_ml"] = round(parenchyma, 4)
    totals["brain_parenchymal_fraction"] = round(parenchyma / etiv_ml, 6) if etiv_ml else None
    if not etiv_ml:
        totals["reason"] = "no intracranial volume: brain parenchymal fraction undefined"
    return totals


def structure_totals(dseg: LabelImage) -> dict[str, float]:
    """Totals (mL) from a FreeSurfer-id structure map: ventricles, parenchyma, grey- and white-matter structures.

    ``grey_matter_structures_ml`` sums the structures whose class is GM
    (:data:`mriquant.core.labels.STRUCTURE_TISSUE`: cortices and subcortical nuclei), ``white_matter_structures_ml``
    those whose class is WM (cerebral and cerebellar white matter, brain stem).
    """
    from mriquant.core.labels import STRUCTURE_TISSUE

    counts = label_counts(dseg)
    voxel_ml = dseg.voxel_volume_ml

    def total(ids: Any) -> float:
        return round(sum(c for v, c in counts.items() if v in ids) * voxel_ml, 4)

    by_class = {c: {i for i, k in STRUCTURE_TISSUE.items() if k == c} for c in (2, 3)}
    return {
        "ventricles_ml": total(VENTRICLES),
        "parenchyma_ml": total({v for v in counts if v not in NON_PARENCHYMA}),
        "grey_matter_structures_ml": total(by_class[2]),
        "white_matter_structures_ml": total(by_class[3]),
    }


def intracranial_volume_ml(brain_mask: LabelImage) -> float:
    """Volume of the brain mask (GM + WM + CSF inside the dura), in mL."""
    return float(np.count_nonzero(brain_mask.array)) * brain_mask.voxel_volume_ml


def etiv_from_affine(subject_to_template: npt.NDArray[np.float64], template_icv_ml: float) -> float:
    """Atlas-scaling estimate of intracranial volume (Buckner et al. 2004).

    Parameters
    ----------
    subject_to_template : numpy.ndarray, shape (4, 4)
        World-to-world linear transform from the subject to the template (RAS mm).
    template_icv_ml : float
        Intracranial volume of the template in mL.
    """
    det = abs(float(np.linalg.det(subject_to_template[:3, :3])))
    return template_icv_ml / det


def tissue_table() -> LabelTable:
    """The tissue label table (for :func:`label_volumes` on tissue maps)."""
    return TISSUES
