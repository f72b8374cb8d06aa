"""Structure volumes agree with the tissue classes: mriquant.segment.reconcile and structure_pv_volumes."""

from __future__ import annotations

import numpy as np
import pytest

from mriquant.core.case import Case
from mriquant.core.image import Image, LabelImage
from mriquant.quantify.volumes import structure_pv_volumes, structure_totals
from mriquant.segment.reconcile import ReconcileStep, reconcile

CSF, GM, WM = 1, 2, 3


def maps() -> tuple[LabelImage, LabelImage]:
    """A 1 mm slab: left cortex (3) over left white matter (2), a pallidum (13) inside the white matter.

    Along i: 0-3 background, 4-7 CSF (sulcus, labelled cortex by the structure model), 8-11 GM (cortex),
    12-13 WM labelled cortex, 14-15 GM labelled white matter (touching the cortex), 16-29 WM; a GM blob in
    the deep white matter (i 24-25, j 2-3), the pallidum at i 18-21, j 6-9, WM in the tissue map.
    """
    shape = (32, 12, 12)
    tissue = np.zeros(shape, np.uint8)
    dseg = np.zeros(shape, np.int16)
    tissue[4:8], tissue[8:12], tissue[12:14], tissue[14:16], tissue[16:30] = CSF, GM, WM, GM, WM
    dseg[4:14], dseg[14:30] = 3, 2
    tissue[24:26, 2:4, 2:4] = GM  # white-matter hypointensity: not cortex
    dseg[18:22, 6:10, 6:10] = 13
    affine = np.eye(4)
    return LabelImage(tissue, affine), LabelImage(dseg, affine)


def test_rules_move_each_disagreement() -> None:
    tissue, dseg = maps()
    out = reconcile(tissue, dseg)
    d, t = out.dseg.array, out.tissue.array
    assert (d[4:8] == 0).all()  # sulcal CSF is no longer cortex
    assert (d[8:12] == 3).all() and (d[12:14] == 2).all()  # WM labelled cortex -> white matter
    assert (d[14:16] == 3).all()  # GM at the border -> cortex
    assert (d[24:26, 2:4, 2:4] == 2).all()  # the deep GM blob stays white matter
    assert (t[18:22, 6:10, 6:10] == GM).all() and (d[18:22, 6:10, 6:10] == 13).all()  # a nucleus is grey matter
    slab = 12 * 12
    assert out.moved_ml == {
        "csf_unlabelled": 4 * slab / 1000, "cortex_to_white_matter": 2 * slab / 1000,
        "white_matter_to_cortex": 2 * slab / 1000, "nuclei_wm_to_gm": 64 / 1000,
    }  # fmt: skip
    assert (tissue.array[18:22, 6:10, 6:10] == WM).all() and (dseg.array[4:8] == 3).all()  # inputs untouched


def test_grey_structures_within_grey_matter_after() -> None:
    tissue, dseg = maps()
    before = structure_totals(dseg)["grey_matter_structures_ml"]
    gm_before = float((tissue.array == GM).sum()) / 1000
    assert before > gm_before * 1.02  # the defect: cortex holds CSF and WM
    out = reconcile(tissue, dseg)
    totals = structure_totals(out.dseg)
    gm = float((out.tissue.array == GM).sum()) / 1000
    parenchyma = float(np.isin(out.tissue.array, (GM, WM)).sum()) / 1000
    assert totals["grey_matter_structures_ml"] <= gm
    assert totals["parenchyma_ml"] == pytest.approx(parenchyma)


def test_probabilities_follow_rule_four() -> None:
    tissue, dseg = maps()
    rng = np.random.default_rng(0)
    raw = rng.dirichlet((1, 1, 1), size=tissue.shape).astype(np.float32)
    probs = {name: Image(raw[..., i], tissue.affine) for i, name in enumerate(("CSF", "GM", "WM"))}
    out = reconcile(tissue, dseg, probs)
    nucleus = (slice(18, 22), slice(6, 10), slice(6, 10))
    assert np.allclose(out.probabilities["GM"].array[nucleus], raw[nucleus][..., 1] + raw[nucleus][..., 2])
    assert (out.probabilities["WM"].array[nucleus] == 0).all()
    assert np.array_equal(out.probabilities["GM"].array[:16], raw[:16, ..., 1])
    assert np.array_equal(probs["WM"].array, raw[..., 2])  # input untouched


def test_step_records_and_skips_without_both_maps() -> None:
    tissue, dseg = maps()
    image = Image(np.ones(tissue.shape, np.float32), tissue.affine)
    case = Case(image, labels={"tissue": tissue, "dseg": dseg})
    out = ReconcileStep()(case)
    assert out.provenance[-1].name == "reconcile"
    assert out.provenance[-1].params["moved_ml"]["csf_unlabelled"] == pytest.approx(0.576)
    alone = ReconcileStep()(Case(image, labels={"tissue": tissue}))
    assert alone.labels == {"tissue": tissue} and alone.provenance[-1].params["skipped"] == "no dseg map"


def test_refuses_two_grids() -> None:
    tissue, dseg = maps()
    shifted = LabelImage(dseg.array, np.diag([2.0, 1.0, 1.0, 1.0]))
    with pytest.raises(Exception, match="Expected the tissue and structure maps on one grid"):
        reconcile(tissue, shifted)


def test_pv_volumes_credit_the_nearest_structure_of_the_class() -> None:
    """Half-GM voxels next to a cortex count half for it; sulcal CSF far from a ventricle counts for none."""
    shape = (20, 6, 6)
    dseg = np.zeros(shape, np.int16)
    dseg[5:10] = 3  # cortex
    dseg[15:18] = 4  # a ventricle
    gm = np.zeros(shape, np.float32)
    gm[5:10] = 1.0
    gm[10] = 0.5  # partial-volume rim just outside the cortex label: credited
    gm[13] = 0.5  # three voxels away: not credited
    csf = np.zeros(shape, np.float32)
    csf[0:5] = 1.0  # sulcal CSF, far from the ventricle
    csf[15:18] = 1.0
    affine = np.eye(4)
    pv = structure_pv_volumes(LabelImage(dseg, affine), {"GM": Image(gm, affine), "CSF": Image(csf, affine)})
    slab = 36 / 1000
    assert pv[3] == pytest.approx(5.5 * slab)
    assert pv[4] == pytest.approx(3 * slab)
