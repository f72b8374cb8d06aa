"""The volumes.json document and volumes.csv of a segmented case (phantom truth as the segmentation)."""

from __future__ import annotations

import csv
import io

import numpy as np
import pytest

from mriquant.core.case import Case
from mriquant.quantify.measure import CSV_COLUMNS, measure, template_icv_ml, volumes_csv
from mriquant.testing.phantom import Phantom, PhantomSpec, make_phantom
from mriquant.testing.transforms import WorldIdentity


@pytest.fixture(scope="module")
def phantom() -> Phantom:
    return make_phantom(PhantomSpec(spacing=(2.0, 2.0, 2.5), orientation="LIA", seed=7))


def _case(ph: Phantom, *, transform: bool = False) -> Case:
    case = Case(ph.image, labels={"brain_mask": ph.brain_mask, "tissue": ph.tissue, "dseg": ph.structures})
    if transform:
        case.transforms["to_mni"] = WorldIdentity(ph.image)
    return case


def test_volumes_match_voxel_counts(phantom: Phantom) -> None:
    doc = measure(_case(phantom))
    voxel_ml = phantom.image.voxel_volume_ml
    assert doc["units"] == "mL"
    assert doc["etiv_ml"] == pytest.approx(np.count_nonzero(phantom.brain_mask.array) * voxel_ml, rel=1e-6)
    truth = phantom.tissue_volumes_ml()
    assert doc["tissues"]["gm_ml"] == pytest.approx(truth["GM"], abs=1e-3)
    assert doc["tissues"]["parenchyma_ml"] == pytest.approx(truth["GM"] + truth["WM"], abs=1e-3)
    assert doc["tissues"]["brain_parenchymal_fraction"] == pytest.approx(
        (truth["GM"] + truth["WM"]) / doc["etiv_ml"], rel=1e-4
    )
    rows = {r["label"]: r for r in doc["structures"]}
    for label in (4, 43, 10, 49):
        count = np.count_nonzero(phantom.structures.array == label)
        assert rows[label]["voxels"] == count
        assert rows[label]["volume_ml"] == pytest.approx(count * voxel_ml, abs=1e-3)
        assert rows[label]["fraction_of_etiv"] == pytest.approx(count * voxel_ml / doc["etiv_ml"], abs=1e-6)
        assert rows[label]["surface_area_mm2"] > 0 and rows[label]["components"] >= 1


def test_undefined_values_are_null_with_a_reason(phantom: Phantom) -> None:
    doc = measure(_case(phantom))
    assert doc["etiv_affine_ml"] is None and "registration" in doc["etiv_affine_reason"]
    assert all(r["volume_pv_ml"] is None for r in doc["tissue_classes"])  # no posteriors in this case
    assert doc["structures"][0]["confidence"] is None
    without = Case(phantom.image, labels={"brain_mask": phantom.brain_mask, "tissue": phantom.tissue})
    doc = measure(without)
    assert doc["structures"] == [] and doc["structures_reason"] and doc["totals"] is None


def test_atlas_scaling_cross_check(phantom: Phantom) -> None:
    doc = measure(_case(phantom, transform=True))
    assert doc["etiv_affine_ml"] == pytest.approx(template_icv_ml(), rel=1e-6)  # identity transform


def test_asymmetry_pairs(phantom: Phantom) -> None:
    doc = measure(_case(phantom))
    pairs = {r["structure"]: r for r in doc["asymmetry"]}
    thal = pairs["Thalamus"]
    left, right = thal["left_ml"], thal["right_ml"]
    assert thal["asymmetry_index"] == pytest.approx((left - right) / ((left + right) / 2), abs=1e-4)


def test_csv_has_one_row_per_class_and_structure(phantom: Phantom) -> None:
    doc = measure(_case(phantom))
    rows = list(csv.DictReader(io.StringIO(volumes_csv(doc))))
    assert tuple(rows[0]) == CSV_COLUMNS
    assert [r["kind"] for r in rows].count("tissue") == 3
    assert [r["kind"] for r in rows[:3 + len(doc["structures"])]] == ["tissue"] * 3 + ["structure"] * len(
        doc["structures"])  # the eTIV and total rows come after these
    by_label = {(r["kind"], int(r["label"])): r for r in rows if r["kind"] in ("tissue", "structure")}
    assert float(by_label[("structure", 10)]["volume_ml"]) == pytest.approx(
        next(s["volume_ml"] for s in doc["structures"] if s["label"] == 10)
    )
    assert by_label[("structure", 10)]["asymmetry_index"] != ""
    assert by_label[("tissue", 1)]["volume_pv_ml"] == ""  # None is an empty cell, never 0


def test_csv_has_the_etiv_and_total_rows_of_the_json(phantom: Phantom) -> None:
    doc = measure(_case(phantom, transform=True))
    rows = list(csv.DictReader(io.StringIO(volumes_csv(doc))))
    extra = {r["name"]: r for r in rows if r["kind"] not in ("tissue", "structure")}
    assert set(extra) == {"etiv_ml", "etiv_affine_ml", "tissues.parenchyma_ml", "totals.parenchyma_ml",
                          "totals.ventricles_ml", "totals.grey_matter_structures_ml",
                          "totals.white_matter_structures_ml"}
    assert float(extra["etiv_ml"]["volume_ml"]) == pytest.approx(doc["etiv_ml"])
    assert float(extra["etiv_affine_ml"]["volume_ml"]) == pytest.approx(doc["etiv_affine_ml"])
    assert float(extra["tissues.parenchyma_ml"]["volume_ml"]) == pytest.approx(doc["tissues"]["parenchyma_ml"])
    assert float(extra["tissues.parenchyma_ml"]["fraction_of_etiv"]) == pytest.approx(
        doc["tissues"]["brain_parenchymal_fraction"])
    for key in ("parenchyma_ml", "ventricles_ml"):
        assert float(extra[f"totals.{key}"]["volume_ml"]) == pytest.approx(doc["totals"][key])
    assert "normalisation" in extra["etiv_affine_ml"]["description"]  # says it is not the one used
    assert all(r["description"] for r in rows)  # every row says what it is
    assert [r["kind"] for r in rows].count("etiv") == 2 and extra["etiv_ml"]["label"] == ""


def test_csv_undefined_etiv_is_an_empty_cell_with_its_reason(phantom: Phantom) -> None:
    doc = measure(_case(phantom))  # no registration: no atlas-scaling estimate
    row = next(r for r in csv.DictReader(io.StringIO(volumes_csv(doc))) if r["name"] == "etiv_affine_ml")
    assert row["volume_ml"] == "" and "no registration to MNI152" in row["description"]
