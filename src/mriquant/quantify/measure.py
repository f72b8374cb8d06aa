"""Assemble the measurements of a processed case: the ``volumes.json`` document and ``volumes.csv``.

The document (public contract, ``../shared/DESIGN.md``)::

    {"units": "mL", "etiv_ml": ..., "etiv_method": ..., "etiv_affine_ml": ...,
     "tissues": {"csf_ml", "gm_ml", "wm_ml", "parenchyma_ml", "brain_parenchymal_fraction", ...},
     "tissue_classes": [{label, name, volume_ml, volume_pv_ml, fraction_of_etiv, voxels}],
     "totals": {"ventricles_ml", "parenchyma_ml", "grey_matter_structures_ml", "white_matter_structures_ml"},
     "structures": [{label, name, volume_ml, volume_pv_ml, fraction_of_etiv, voxels, confidence,
                     surface_area_mm2, sphericity, compactness, centroid_mm, principal_axes_mm, bbox_mm,
                     components, largest_component_fraction}],
     "asymmetry": [{structure, left_label, right_label, left_ml, right_ml, asymmetry_index}],
     "qc": {"metrics", "flags", "structures"}}

Undefined values are ``null`` with a ``reason`` next to them, never 0.
"""

from __future__ import annotations

import csv
import io
from typing import Any

from mriquant.core.case import Case
from mriquant.core.labels import TISSUES, freesurfer
from mriquant.quantify.volumes import (
    LabelVolume,
    asymmetries,
    etiv_from_affine,
    intracranial_volume_ml,
    label_volumes,
    structure_pv_volumes,
    structure_totals,
    tissue_totals,
)

__all__ = ["CSV_COLUMNS", "measure", "volumes_csv"]

#: How ``etiv_ml`` is measured (written next to it).
ETIV_METHOD = "volume of the brain mask (GM + WM + CSF inside the dura), native grid"
#: Columns of ``volumes.csv`` (``description`` last: it was added after the others, whose order readers rely on).
CSV_COLUMNS = (
    "kind", "label", "name", "volume_ml", "volume_pv_ml", "fraction_of_etiv", "asymmetry_index",
    "surface_area_mm2", "sphericity", "components", "confidence", "description",
)  # fmt: skip
#: ``volumes.csv`` rows of whole-head figures: (kind, volumes.json section or None, key, description).
CSV_SUMMARY_ROWS = (
    ("etiv", None, "etiv_ml", "Intracranial volume (eTIV) used for every fraction_of_etiv: volume of the brain mask "
                              "(GM + WM + CSF inside the dura), native grid"),
    ("etiv", None, "etiv_affine_ml", "Intracranial volume by atlas scaling (MNI152 brain-mask volume / det of the "
                                     "subject-to-MNI affine): a cross-check, not used for normalisation"),
    ("tissue_total", "tissues", "parenchyma_ml", "Brain parenchyma from the tissue map: GM + WM; fraction_of_etiv is "
                                                "the brain parenchymal fraction"),
    ("structure_total", "totals", "parenchyma_ml", "Brain parenchyma from the structure map: every structure label "
                                                  "except ventricles, CSF, vessels and choroid plexus"),
    ("structure_total", "totals", "ventricles_ml", "Ventricles from the structure map: lateral, inferior lateral, "
                                                  "3rd, 4th and 5th ventricles"),
    ("structure_total", "totals", "grey_matter_structures_ml", "Grey-matter structures summed: cortices and "
                                                              "subcortical nuclei (at most the tissue map's GM)"),
    ("structure_total", "totals", "white_matter_structures_ml", "White-matter structures summed: cerebral and "
                                                               "cerebellar white matter, brain stem"),
)  # fmt: skip
#: Shape keys copied from :func:`mriquant.quantify.shape.structure_shapes` into each structure row.
SHAPE_KEYS = ("surface_area_mm2", "sphericity", "compactness", "centroid_mm", "principal_axes_mm", "bbox_mm",
              "components", "largest_component_fraction")  # fmt: skip


def template_icv_ml() -> float:
    """Volume (mL) of the MNI152 2009a brain mask shipped with the template."""
    from mriquant.preprocess.template import template_brain_mask

    return intracranial_volume_ml(template_brain_mask(resolution_mm=1.0))


def _etiv(case: Case) -> dict[str, Any]:
    mask = case.labels.get("brain_mask")
    out: dict[str, Any] = {"etiv_ml": None, "etiv_method": ETIV_METHOD, "etiv_affine_ml": None}
    if mask is None:
        out["etiv_reason"] = "no brain mask"
    else:
        out["etiv_ml"] = round(intracranial_volume_ml(mask), 3)
    transform = case.transforms.get("to_mni")
    if transform is not None:
        out["etiv_affine_ml"] = round(etiv_from_affine(transform.affine_ras(), template_icv_ml()), 3)
        out["etiv_affine_method"] = "MNI152 brain-mask volume / det(subject-to-MNI affine) (Buckner et al. 2004)"
    else:
        out["etiv_affine_reason"] = "no registration to MNI152"
    return out


def _tissue_section(case: Case, etiv: float | None) -> dict[str, Any]:
    tissue = case.labels.get("tissue")
    if tissue is None:
        return {"tissues": None, "tissues_reason": "no tissue segmentation", "tissue_classes": []}
    rows = label_volumes(tissue, table=TISSUES, probabilities=case.tissue_probabilities(), etiv_ml=etiv)
    totals = tissue_totals(tissue, etiv_ml=etiv)
    for t in TISSUES:
        pv = next((r.volume_pv_ml for r in rows if r.label == t.id), None)
        totals[f"{t.name.lower()}_pv_ml"] = pv
    return {"tissues": totals, "tissue_classes": [r.as_dict() for r in rows]}


def _structure_rows(
    case: Case, volumes: list[LabelVolume], confidence: dict[int, float], shapes: list[dict[str, Any]] | None
) -> list[dict[str, Any]]:
    from mriquant.quantify.shape import structure_shapes

    dseg = case.labels["dseg"]
    by_label = {s["label"]: s for s in (shapes if shapes is not None else structure_shapes(dseg, table=freesurfer()))}
    rows = []
    for volume in volumes:
        row = volume.as_dict()
        row["confidence"] = confidence.get(volume.label)
        shape = by_label.get(volume.label, {})
        row.update({k: shape.get(k) for k in SHAPE_KEYS})
        if shape.get("reason"):
            row["shape_reason"] = shape["reason"]
        rows.append(row)
    return rows


def _confidence(case: Case) -> dict[int, float]:
    """Per-label confidence recorded by a structure method (``info["confidence"]`` of its step)."""
    for step in reversed(case.provenance):
        info = step.params.get("info", {}) if isinstance(step.params, dict) else {}
        if isinstance(info, dict) and "confidence" in info:
            return {int(k): float(v) for k, v in info["confidence"].items()}
    return {}


def measure(
    case: Case, *, qc: dict[str, Any] | None = None, shapes: list[dict[str, Any]] | None = None
) -> dict[str, Any]:
    """The ``volumes.json`` document of a processed case (see the module docstring).

    Parameters
    ----------
    case : Case
        With ``labels["brain_mask"]`` and ``labels["tissue"]`` and/or ``labels["dseg"]`` on the native grid.
    qc : dict, optional
        Quality-control results to embed (from :func:`mriquant.quantify.qc.quality_control`).
    shapes : list of dict, optional
        :func:`mriquant.quantify.shape.structure_shapes` of ``labels["dseg"]`` (computed when omitted).
    """
    doc: dict[str, Any] = {"units": "mL"}
    doc.update(_etiv(case))
    etiv = doc["etiv_ml"]
    doc.update(_tissue_section(case, etiv))
    if "dseg" in case.labels:
        probabilities = case.tissue_probabilities()
        pv = structure_pv_volumes(case.labels["dseg"], probabilities) if probabilities else None
        volumes = label_volumes(case.labels["dseg"], table=freesurfer(), pv_ml=pv, etiv_ml=etiv)
        doc["structures"] = _structure_rows(case, volumes, _confidence(case), shapes)
        doc["totals"] = structure_totals(case.labels["dseg"])
        doc["asymmetry"] = asymmetries(volumes)
    else:
        doc.update(structures=[], structures_reason="no structure segmentation", totals=None, asymmetry=[])
    if qc is not None:
        doc["qc"] = qc
    return doc


def _asymmetry_by_label(doc: dict[str, Any]) -> dict[int, float | None]:
    out: dict[int, float | None] = {}
    for row in doc.get("asymmetry", []):
        out[row["left_label"]] = out[row["right_label"]] = row["asymmetry_index"]
    return out


def _summary_rows(doc: dict[str, Any]) -> list[dict[str, Any]]:
    """The eTIV and total rows of ``volumes.csv`` (name = the volumes.json key, e.g. ``totals.parenchyma_ml``)."""
    rows = []
    for kind, section, key, description in CSV_SUMMARY_ROWS:
        source = doc.get(section) if section else doc
        if not isinstance(source, dict) or key not in source:
            continue
        row: dict[str, Any] = {"kind": kind, "name": f"{section}.{key}" if section else key,
                               "volume_ml": source[key], "description": description}
        if section == "tissues":
            row["fraction_of_etiv"] = source.get("brain_parenchymal_fraction")
        reason = source.get(key.removesuffix("_ml") + "_reason") if section is None else None
        if source[key] is None and reason:
            row["description"] += f" (undefined: {reason})"
        rows.append(row)
    return rows


def volumes_csv(doc: dict[str, Any]) -> str:
    """``volumes.csv``: one row per tissue class and per structure, then the eTIV and total rows.

    Empty cells for undefined values. ``kind`` is ``tissue``, ``structure``, ``etiv``, ``tissue_total`` or
    ``structure_total``; ``description`` says what each row measures. The rows after the structures were added
    after the others: readers that take rows by ``kind`` or by position among the first ones are unaffected.
    """
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=CSV_COLUMNS, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    asymmetry = _asymmetry_by_label(doc)
    for row in doc.get("tissue_classes", []):
        writer.writerow({**row, "kind": "tissue", "description": "Tissue class volume (tissue map)"})
    for row in doc.get("structures", []):
        writer.writerow({**row, "kind": "structure", "asymmetry_index": asymmetry.get(row["label"]),
                         "description": "Structure volume (structure map)"})
    for row in _summary_rows(doc):
        writer.writerow(row)
    return buffer.getvalue()
