"""Quality control on the phantom: clean scans pass, and each planted defect raises its flag."""

from __future__ import annotations

import re
from importlib import resources

import numpy as np
import pytest
from scipy import ndimage

from mriquant.core.errors import InputError
from mriquant.core.image import Image, LabelImage
from mriquant.core.labels import TISSUES, freesurfer
from mriquant.quantify.qc import QCThresholds, adult_ranges, estimate_noise, quality_control
from mriquant.quantify.shape import structure_shapes
from mriquant.testing import Phantom, make_phantom

NOISE_SD = 0.03 * 1000.0  # the phantom fixture: 3 % of the brightest tissue mean (1000)


def _qc(ph: Phantom, **kwargs: object) -> dict:
    maps = {"brain_mask": ph.brain_mask, "tissue": ph.tissue, "dseg": ph.structures, **kwargs}
    return quality_control(ph.image, **maps)  # type: ignore[arg-type]


def _codes(qc: dict) -> set[tuple[str, str, int | None]]:
    return {(f["code"], f["severity"], f.get("label")) for f in qc["flags"]}


def _relabel(ph: Phantom, array: np.ndarray) -> LabelImage:
    return ph.structures.with_array(array.astype(ph.structures.array.dtype))


def test_clean_phantom_has_no_flags_and_true_metrics(phantom: Phantom) -> None:
    qc = _qc(phantom, registration={"ncc": 0.62, "nmi": 1.2, "voxels": 1.0e5})
    assert qc["flags"] == []
    m = qc["metrics"]
    assert m["snr_method"] == "background_rayleigh"
    assert m["noise_sd"] == pytest.approx(NOISE_SD, rel=0.05)
    wm = phantom.image.array[phantom.tissue.array == 3].mean()
    gm = phantom.image.array[phantom.tissue.array == 2].mean()
    assert m["snr"] == pytest.approx(wm / NOISE_SD, rel=0.05)
    assert m["cnr_gm_wm"] == pytest.approx((wm - gm) / NOISE_SD, rel=0.05)
    truth = phantom.tissue_volumes_ml()
    assert m["brain_volume_ml"] == pytest.approx(sum(truth.values()), rel=1e-4)
    assert m["tissue_volumes_ml"] == pytest.approx(truth, rel=1e-4)
    assert m["parenchyma_ml"] == pytest.approx(truth["GM"] + truth["WM"], rel=1e-4)
    assert m["registration"] == {"ncc": 0.62, "nmi": 1.2, "voxels": 1.0e5}
    assert m["reasons"] == {} and qc["structures"] == {}


def test_skull_stripped_image_uses_the_white_matter_residual(phantom: Phantom) -> None:
    inside = phantom.brain_mask.array > 0
    stripped = phantom.image.with_array(np.where(inside, phantom.image.array, 0).astype(np.float32))
    qc = quality_control(stripped, tissue=phantom.tissue)
    assert qc["metrics"]["snr_method"] == "wm_residual"
    assert qc["metrics"]["noise_sd"] == pytest.approx(NOISE_SD, rel=0.1)
    assert qc["metrics"]["background_voxels"] == 0


@pytest.mark.parametrize("kind", ["rician", "gaussian"])
def test_background_noise_estimate_on_an_oblique_anisotropic_grid(kind: str) -> None:
    ph = make_phantom(spacing=(1.5, 1.5, 3.0), orientation="LIA", rotation=(8.0, 0.0, -5.0), noise=0.05,
                      noise_kind=kind, seed=2)
    sigma, method, voxels = estimate_noise(ph.image)
    assert method == f"background_{'rayleigh' if kind == 'rician' else 'gaussian'}"
    assert sigma == pytest.approx(0.05 * 1000, rel=0.05)
    assert voxels > 10_000


def test_no_noise_source_leaves_snr_undefined(phantom: Phantom) -> None:
    inside = phantom.brain_mask.array > 0
    stripped = phantom.image.with_array(np.where(inside, phantom.image.array, 0).astype(np.float32))
    qc = quality_control(stripped)
    assert qc["metrics"]["snr"] is None and qc["metrics"]["cnr_gm_wm"] is None
    assert "snr" in qc["metrics"]["reasons"] and "brain_volume_ml" in qc["metrics"]["reasons"]
    assert ("not_checked", "info", None) in _codes(qc)


def test_heavy_noise_lowers_snr_and_is_flagged(phantom: Phantom) -> None:
    noisy = make_phantom(phantom.spec, noise=0.25)
    qc = quality_control(noisy.image, tissue=noisy.tissue)
    baseline = quality_control(phantom.image, tissue=phantom.tissue)
    assert qc["metrics"]["noise_sd"] == pytest.approx(250.0, rel=0.05)
    assert qc["metrics"]["snr"] < baseline["metrics"]["snr"] / 5
    codes = {f["code"] for f in qc["flags"]}
    assert {"low_snr", "low_cnr"} <= codes
    assert not {f["code"] for f in baseline["flags"]} & {"low_snr", "low_cnr"}


def test_left_right_swap(phantom: Phantom) -> None:
    arr = phantom.structures.array.copy()
    arr[phantom.structures.array == 10] = 49
    arr[phantom.structures.array == 49] = 10
    dseg = _relabel(phantom, arr)
    qc = _qc(phantom, dseg=dseg)
    swaps = [f for f in qc["flags"] if f["code"] == "left_right_swap"]
    assert [(f["label"], f["severity"]) for f in swaps] == [(10, "error")]
    assert "Left-Thalamus" in swaps[0]["message"]
    # the same verdict from precomputed shape rows
    rows = structure_shapes(dseg, table=freesurfer(), only=[10, 49])
    assert [f["label"] for f in _qc(phantom, dseg=dseg, shapes=rows)["flags"] if f["code"] == "left_right_swap"] == [10]


def test_fragmented_structure_is_flagged(phantom: Phantom) -> None:
    arr = phantom.structures.array.copy()
    putamen = np.argwhere(arr == 12)
    axis = int(np.argmax(np.ptp(putamen, axis=0)))  # cut across its longest array axis
    middle = int(np.median(putamen[:, axis]))
    cut = [slice(None)] * 3
    cut[axis] = slice(middle - 1, middle + 1)
    region = arr[tuple(cut)]
    region[region == 12] = 0
    _, count = ndimage.label(arr == 12, structure=np.ones((3, 3, 3)))
    assert count == 2
    qc = _qc(phantom, dseg=_relabel(phantom, arr))
    assert ("fragmented", "warning", 12) in _codes(qc)
    assert not any(f["code"] == "fragmented" and f["label"] != 12 for f in qc["flags"])


def test_many_pieces_are_flagged_unless_exempt(phantom: Phantom) -> None:
    arr = phantom.structures.array.copy()
    background = np.argwhere(phantom.tissue.array == 0)[::997][:15]  # 15 scattered single voxels
    arr[tuple(background.T)] = 49
    qc = _qc(phantom, dseg=_relabel(phantom, arr))
    flags = [f for f in qc["flags"] if f["code"] == "fragmented"]
    assert [f["label"] for f in flags] == [49] and "16 separate pieces" in flags[0]["message"]
    lenient = _qc(phantom, dseg=_relabel(phantom, arr), thresholds=QCThresholds(max_components=20))
    assert not any(f["code"] == "fragmented" for f in lenient["flags"])


def test_volume_out_of_range(phantom: Phantom) -> None:
    arr = phantom.structures.array.copy()
    thalamus = arr == 49
    arr[thalamus & ~ndimage.binary_erosion(thalamus)] = 0
    volume = np.count_nonzero(arr == 49) * phantom.structures.voxel_volume_ml
    assert 0 < volume < 4.0  # below the table's 4.0 mL
    qc = _qc(phantom, dseg=_relabel(phantom, arr))
    severity = "error" if volume < 2.0 else "warning"
    assert ("volume_out_of_range", severity, 49) in _codes(qc)
    assert [f["label"] for f in qc["flags"]] == [49]
    # a tiny brain mask is far below the intracranial range: an error
    eroded = ndimage.binary_erosion(phantom.brain_mask.array, iterations=16)
    small = phantom.brain_mask.with_array(eroded.astype(np.uint8))
    assert 0 < np.count_nonzero(small.array) * small.voxel_volume_ml < 1000 / 2
    assert ("volume_out_of_range", "error", 1) in _codes(_qc(phantom, brain_mask=small))


def test_brain_cut_by_the_field_of_view_is_flagged(phantom: Phantom) -> None:
    from mriquant.core.geometry import reorient

    assert _qc(phantom)["metrics"]["brain_mask_border_mm2"] == 0.0
    ras = reorient(phantom.image, "RAS")
    top = int(np.argwhere(reorient(phantom.brain_mask, "RAS").array > 0)[:, 2].max())
    cut = slice(0, top - 4)  # the scan ends 4 voxels below the top of the brain
    image = Image(ras.array[:, :, cut], ras.affine.copy())
    mask = LabelImage(reorient(phantom.brain_mask, "RAS").array[:, :, cut], ras.affine.copy())
    qc = quality_control(image, brain_mask=mask)
    flags = [f for f in qc["flags"] if f["code"] == "fov_cut"]
    area = np.count_nonzero(mask.array[:, :, -1]) * float(np.prod(mask.spacing[:2]))
    assert qc["metrics"]["brain_mask_border_mm2"] == pytest.approx(area, rel=1e-4) and area > 100.0
    assert len(flags) == 1 and flags[0]["severity"] == "warning"
    assert f"superior ({area / 100:.1f} cm²)" in flags[0]["message"] and "partial" in flags[0]["message"]
    lenient = quality_control(image, brain_mask=mask, thresholds=QCThresholds(fov_cut_mm2=area + 1.0))
    assert "fov_cut" not in {f["code"] for f in lenient["flags"]}


def test_missing_structures(phantom: Phantom) -> None:
    arr = phantom.structures.array.copy()
    arr[arr == 11] = 0  # left caudate gone
    qc = _qc(phantom, dseg=_relabel(phantom, arr))
    assert ("missing_structure", "error", 11) in _codes(qc)
    assert sum(f["code"] == "missing_structure" for f in qc["flags"]) == 1
    arr[arr == 42] = 3  # right cortex relabelled as left: a missing expected structure
    codes = _codes(_qc(phantom, dseg=_relabel(phantom, arr)))
    assert ("missing_structure", "error", 42) in codes


def test_registration_thresholds(phantom: Phantom) -> None:
    bad = _qc(phantom, registration={"ncc": 0.31, "nmi": 1.01, "min_scale": 0.9, "max_scale": 1.1})
    messages = [f for f in bad["flags"] if f["code"] == "registration_quality"]
    assert sorted(f["severity"] for f in messages) == ["error", "warning"]
    weak = _qc(phantom, registration={"correlation": 0.45, "max_scale": 2.5})
    assert sorted(f["severity"] for f in weak["flags"] if f["code"] == "registration_quality") == ["warning", "warning"]
    undefined = _qc(phantom, registration={"ncc": float("nan"), "nmi": float("nan"), "voxels": 3.0})
    assert undefined["metrics"]["registration"]["ncc"] is None
    assert ("registration_quality", "error", None) in _codes(undefined)


def test_posterior_confidence_per_structure(phantom: Phantom) -> None:
    tissue = phantom.tissue.array
    probabilities = {}
    for t in TISSUES:
        certain = np.where(tissue == t.id, 0.95, 0.05 / 2)
        if t.name == "GM":  # grey matter voxels: an undecided segmenter
            certain = np.where(tissue == 2, 0.4, certain)
        probabilities[t.name] = Image(certain.astype(np.float32), phantom.image.affine)
    for t in ("CSF", "WM"):  # GM voxels: 0.3 each for the others, so the largest posterior there is 0.4
        probabilities[t] = probabilities[t].with_array(np.where(tissue == 2, 0.3, probabilities[t].array))
    qc = _qc(phantom, probabilities=probabilities)
    assert qc["structures"]["GM"] == {"label": 2, "confidence": pytest.approx(0.4, abs=1e-4)}
    assert qc["structures"]["WM"]["confidence"] == pytest.approx(0.95, abs=1e-4)
    assert [(f["code"], f["severity"], f["label"]) for f in qc["flags"]] == [("low_confidence", "error", 2)]


def test_structure_posteriors_use_the_structure_map(phantom: Phantom) -> None:
    prob = Image(np.where(phantom.structures.array == 10, 0.6, 0.0).astype(np.float32), phantom.image.affine)
    qc = _qc(phantom, probabilities={"Left-Thalamus": prob})
    assert qc["structures"]["Left-Thalamus"] == {"label": 10, "confidence": pytest.approx(0.6, abs=1e-4)}
    assert qc["structures"]["Right-Thalamus"]["confidence"] == 0.0
    assert ("low_confidence", "warning", 10) in _codes(qc) and ("low_confidence", "error", 49) in _codes(qc)


def test_maps_off_the_image_grid_are_refused(phantom: Phantom) -> None:
    affine = phantom.tissue.affine.copy()
    affine[0, 3] += 2.0  # shifted by one voxel
    with pytest.raises(InputError, match="image grid"):
        quality_control(phantom.image, tissue=LabelImage(phantom.tissue.array, affine))
    with pytest.raises(InputError, match="GM posterior on the image grid"):
        small = Image(np.ones((4, 4, 4)), np.eye(4))
        quality_control(phantom.image, tissue=phantom.tissue, probabilities={"GM": small})


def test_adult_range_table_is_consistent() -> None:
    rows = adult_ranges()
    text = resources.files("mriquant").joinpath("data/qc/adult_ranges.tsv").read_text("utf-8")
    cited = set(re.findall(r"^#\s+(\w+\d{4}):", text, flags=re.MULTILINE))
    tables = {"freesurfer": freesurfer(), "tissues": TISSUES}
    assert {r.table for r in rows} == {"freesurfer", "tissues", "brain_mask"}
    for r in rows:
        assert 0 < r.min_ml < r.max_ml
        assert {s.strip() for s in r.source.split(";")} <= cited, r
        if r.table in tables:
            assert tables[r.table].by_id(r.label).name == r.name
    for left, right in ((10, 49), (11, 50), (17, 53)):
        a, b = (next(r for r in rows if r.table == "freesurfer" and r.label == x) for x in (left, right))
        assert (a.min_ml, a.max_ml) == (b.min_ml, b.max_ml)


def _pair(pattern: str, message: str) -> tuple[float, float]:
    found = re.search(pattern, message)
    assert found, message
    return float(found[1]), float(found[2])


def test_messages_never_contradict_their_verdict(phantom: Phantom) -> None:
    """Values just below a limit are written with enough decimals to read as below it (89.96 %, not 90 %)."""
    rows = [{**r, "largest_component_fraction": 0.8996} if r["label"] == 12 else r
            for r in structure_shapes(phantom.structures, table=freesurfer())]
    thalamus = Image(np.where(phantom.structures.array == 10, 0.69996, 0.0).astype(np.float32), phantom.image.affine)
    qc = _qc(phantom, shapes=rows, probabilities={"Left-Thalamus": thalamus},
             registration={"ncc": 0.49996, "nmi": 1.2, "min_scale": 0.59999, "max_scale": 1.0})
    by_code = {(f["code"], f.get("label")): f["message"] for f in qc["flags"]}
    shown, limit = _pair(r"holds ([\d.]+) % of its voxels \(expected >= ([\d.]+) %\)", by_code["fragmented", 12])
    assert shown < limit == 90
    registration = " ".join(f["message"] for f in qc["flags"] if f["code"] == "registration_quality")
    shown, limit = _pair(r"template is ([\d.]+), below ([\d.]+)", registration)
    assert shown < limit == 0.5
    low, lo = _pair(r"factors ([\d.]+)-[\d.]+ lie outside ([\d.]+)-", registration)
    assert low < lo == 0.6
    shown, limit = _pair(r"confidence ([\d.]+) is below ([\d.]+)", by_code["low_confidence", 10])
    assert shown < limit == 0.7


def test_volume_message_just_below_the_range_reads_below() -> None:
    side = (999.96 / 1000) ** (1 / 3) * 10.0  # mm: 1000 voxels of 0.99996 mL
    inside = np.zeros((12, 12, 12), np.uint8)
    inside[1:11, 1:11, 1:11] = 1
    affine = np.diag([side, side, side, 1.0])
    qc = quality_control(Image(inside.astype(np.float32) * 100, affine), brain_mask=LabelImage(inside, affine))
    flag = next(f for f in qc["flags"] if f["code"] == "volume_out_of_range")
    shown, low = _pair(r"is ([\d.]+) mL, below the adult range ([\d.]+)-", flag["message"])
    assert shown < low == 1000
    assert (flag["label"], flag["table"]) == (1, "brain_mask")
    assert qc["metrics"]["brain_mask_ml"] == qc["metrics"]["brain_volume_ml"] == pytest.approx(999.96)
