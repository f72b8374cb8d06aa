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
from mriquant.core.labels import BILATERAL_PAIRS, TISSUES, LabelTable, freesurfer

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


def label_volumes(
    labels: LabelImage,
    *,
    table: LabelTable,
    probabilities: dict[str, Image] | None = None,
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
                _round(_pv_volume(probabilities.get(name), voxel_ml)),
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
    """Ventricular and parenchymal totals (mL) from a FreeSurfer-id structure map."""
    counts = label_counts(dseg)
    voxel_ml = dseg.voxel_volume_ml
    ventricles = sum(counts.get(v, 0) for v in VENTRICLES) * voxel_ml
    parenchyma = sum(c for v, c in counts.items() if v not in NON_PARENCHYMA) * voxel_ml
    return {"ventricles_ml": round(ventricles, 4), "parenchyma_ml": round(parenchyma, 4)}


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
