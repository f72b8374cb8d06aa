"""Volumes in mL from label maps: exact on known grids, undefined values are None with a reason."""

from __future__ import annotations

import numpy as np
import pytest

from mriquant.core.image import Image, LabelImage
from mriquant.core.labels import freesurfer
from mriquant.quantify.volumes import (
    asymmetries,
    asymmetry_index,
    etiv_from_affine,
    intracranial_volume_ml,
    label_volumes,
    structure_totals,
    tissue_table,
    tissue_totals,
)


def _labels(spacing: tuple[float, float, float] = (1.0, 1.0, 2.0)) -> LabelImage:
    arr = np.zeros((10, 10, 10), np.int32)
    arr[:5, :, :] = 17  # 500 voxels
    arr[5:, :4, :] = 53  # 200 voxels
    arr[5:, 4:6, :2] = 4  # 20 voxels
    return LabelImage(arr, np.diag([*spacing, 1.0]))


def test_label_volumes_in_ml_with_anisotropic_voxels() -> None:
    rows = {r.label: r for r in label_volumes(_labels(), table=freesurfer(), etiv_ml=1500.0)}
    assert rows[17].volume_ml == pytest.approx(500 * 2 / 1000)
    assert rows[53].volume_ml == pytest.approx(200 * 2 / 1000)
    assert rows[17].name == "Left-Hippocampus" and rows[17].voxels == 500
    assert rows[17].fraction_of_etiv == pytest.approx(1.0 / 1500, rel=1e-3)  # stored to 6 decimals
    assert rows[17].volume_pv_ml is None


def test_partial_volume_column_from_posteriors() -> None:
    labels = _labels()
    prob = Image(np.where(labels.array == 17, 0.5, 0.0).astype(np.float32), labels.affine)
    rows = {r.label: r for r in label_volumes(labels, table=freesurfer(), probabilities={"Left-Hippocampus": prob})}
    assert rows[17].volume_pv_ml == pytest.approx(0.5)
    assert rows[17].fraction_of_etiv is None


def test_asymmetry() -> None:
    assert asymmetry_index(1.2, 0.8) == pytest.approx(0.4)
    assert asymmetry_index(0.0, 0.0) is None
    rows = {r["structure"]: r for r in asymmetries(label_volumes(_labels(), table=freesurfer()))}
    hippo = rows["Hippocampus"]
    assert hippo["left_ml"] == pytest.approx(1.0) and hippo["right_ml"] == pytest.approx(0.4)
    assert hippo["asymmetry_index"] == pytest.approx(0.6 / 0.7, abs=1e-4)
    assert rows["Lateral-Ventricle"]["right_ml"] == 0.0


def test_tissue_totals_and_bpf() -> None:
    arr = np.zeros((10, 10, 10), np.int32)
    arr[:2], arr[2:5], arr[5:] = 1, 2, 3
    totals = tissue_totals(LabelImage(arr, np.eye(4)), etiv_ml=2.0)
    assert totals["csf_ml"] == pytest.approx(0.2) and totals["gm_ml"] == pytest.approx(0.3)
    assert totals["parenchyma_ml"] == pytest.approx(0.8)
    assert totals["brain_parenchymal_fraction"] == pytest.approx(0.4)
    undefined = tissue_totals(LabelImage(arr, np.eye(4)), etiv_ml=None)
    assert undefined["brain_parenchymal_fraction"] is None and "reason" in undefined
    assert [t.id for t in tissue_table()] == [1, 2, 3]


def test_structure_totals_and_icv() -> None:
    labels = _labels()
    totals = structure_totals(labels)
    assert totals["ventricles_ml"] == pytest.approx(0.04)
    assert totals["parenchyma_ml"] == pytest.approx(1.4)
    mask = labels.with_array((labels.array > 0).astype(np.int32))
    assert intracranial_volume_ml(mask) == pytest.approx(720 * 2 / 1000)


def test_etiv_from_affine_scales_with_determinant() -> None:
    shrink = np.diag([0.9, 0.9, 0.9, 1.0])  # subject is larger than the template
    assert etiv_from_affine(shrink, 1500.0) == pytest.approx(1500.0 / 0.729)
