"""Tests of ``mriquant longitudinal`` and :mod:`mriquant.quantify.longitudinal` (synthetic 3 mm phantoms)."""

from __future__ import annotations

import argparse
import dataclasses
import json
import re
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import pytest
from scipy.spatial.transform import Rotation

from mriquant.cli import main
from mriquant.core.case import Case
from mriquant.core.errors import InputError
from mriquant.core.image import Image, LabelImage
from mriquant.quantify import boundary_shift as bs
from mriquant.quantify import longitudinal as lg
from mriquant.testing import make_phantom

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "brainweb-crisp"


def _rigid(angles_deg: tuple[float, float, float], shift_mm: tuple[float, float, float]) -> np.ndarray:
    m = np.eye(4)
    m[:3, :3] = Rotation.from_euler("xyz", angles_deg, degrees=True).as_matrix()
    m[:3, 3] = shift_mm
    return m


def _moved(image: Image, matrix: np.ndarray) -> Image:
    """The same voxels with the head moved in world space by ``matrix``."""
    return image.with_array(image.array) if matrix is None else type(image)(image.array, matrix @ image.affine,
                                                                           dict(image.meta))  # fmt: skip


def _case(image: Image, mask: LabelImage, tissue: LabelImage | None = None) -> Case:
    inside = mask.array > 0
    case = Case(image.with_array(np.where(inside, image.array, 0).astype(np.float32)))
    case.labels["brain_mask"] = mask
    if tissue is not None:
        case.labels["tissue"] = tissue
    return case


def _phantom_pair(scale: float, *, rotation: tuple[float, float, float]) -> tuple[Case, Case, float]:
    """Baseline phantom and a follow-up whose anatomy is scaled by ``scale`` (length) and moved rigidly.

    The follow-up is sampled on a grid of spacing ``3 / scale`` mm relabelled as 3 mm (so the anatomy
    shrinks by ``scale`` with its own partial volume and noise), then its head is moved by a rigid
    transform. Returns the cases and the true PBVC (%).
    """
    base = make_phantom(spacing=(3.0, 3.0, 3.0), seed=3, neck=False)
    follow = make_phantom(spacing=(3.0 / scale,) * 3, seed=3, neck=False, rotation=rotation)
    shrink = np.diag([scale, scale, scale, 1.0])
    move = _rigid((4.0, -3.0, 2.0), (3.0, -2.0, 1.5)) @ shrink
    baseline = _case(base.image, base.brain_mask, base.tissue)
    followup = _case(_moved(follow.image, move), _moved(follow.brain_mask, move))
    return baseline, followup, 100.0 * (scale**3 - 1.0)


_FAST = lg.LongitudinalOptions(syn_iterations=(30, 15, 5))


@pytest.fixture(scope="module")
def rescan() -> lg.ChangeResult:
    baseline, followup, _ = _phantom_pair(1.0, rotation=(2.0, 0.0, -1.0))
    return lg.measure_change(baseline, followup, options=_FAST)


def test_halfway_transform_is_exactly_half() -> None:
    rng = np.random.default_rng(4)
    for _ in range(5):
        full = _rigid(tuple(rng.uniform(-20, 20, 3)), tuple(rng.uniform(-15, 15, 3)))
        half = lg.matrix_sqrt_rigid(full)
        np.testing.assert_allclose(half @ half, full, atol=1e-10)
        np.testing.assert_allclose(half[:3, :3] @ half[:3, :3].T, np.eye(3), atol=1e-12)
        angle = lg.rigid_parameters(half)["rotation_deg"]
        assert angle == pytest.approx(lg.rigid_parameters(full)["rotation_deg"] / 2, abs=1e-3)


def test_halfway_space_meets_in_the_middle() -> None:
    ph = make_phantom(spacing=(4.0, 4.0, 4.0), seed=1, neck=False, noise=0.0, bias=0.0)
    move = _rigid((6.0, 0.0, 0.0), (0.0, 4.0, 0.0))
    space = lg.halfway_space(ph.image, ph.brain_mask, _moved(ph.image, move), _moved(ph.brain_mask, move), move)
    assert lg.mask_dice(space) > 0.99
    inside = space.baseline_mask.array > 0
    assert np.corrcoef(space.baseline.array[inside], space.followup.array[inside])[0, 1] > 0.99


def test_scan_rescan_pbvc_is_small(rescan: lg.ChangeResult) -> None:
    assert abs(rescan.pbvc_percent) < 0.5
    rigid = rescan.registration["rigid"]
    assert rigid["rotation_deg"] == pytest.approx(
        np.degrees(Rotation.from_euler("xyz", (4.0, -3.0, 2.0), degrees=True).magnitude()), abs=1.0
    )
    assert rescan.registration["halfway"]["brain_mask_dice"] > 0.95


def test_known_shrink_has_right_sign_and_magnitude() -> None:
    baseline, followup, truth = _phantom_pair(0.99, rotation=(0.0, 1.0, 0.0))
    result = lg.measure_change(baseline, followup, options=_FAST)
    assert truth == pytest.approx(-2.97, abs=0.01)
    assert result.pbvc_percent < 0
    assert result.pbvc_percent == pytest.approx(truth, abs=0.8)
    rows = {r["name"]: r for r in result.structures}
    assert set(rows) == {"CSF", "GM", "WM"}
    assert rows["WM"]["change_percent"] == pytest.approx(truth, abs=1.5)


def test_change_document_nulls_with_reasons(rescan: lg.ChangeResult) -> None:
    doc = lg.change_document(rescan, interval_years=None, interval_source="unknown")
    assert doc["annualised_pbvc_percent"] is None and doc["annualised_reason"]
    assert all(r["annualised_percent"] is None and r["reason"] for r in doc["structures"])
    doc = lg.change_document(rescan, interval_years=2.0, interval_source="--interval-years")
    assert doc["annualised_pbvc_percent"] == pytest.approx(doc["pbvc_percent"] / 2.0, abs=1e-3)
    csv = lg.change_csv(doc).splitlines()
    assert csv[0].startswith("label,name,baseline_ml") and len(csv) == 2 + len(doc["structures"])


def test_interval_from_dicom_dates() -> None:
    ph = make_phantom(spacing=(8.0, 8.0, 8.0), seed=1)
    a = ph.image.with_array(ph.image.array)
    b = ph.image.with_array(ph.image.array)
    a.meta["dicom"], b.meta["dicom"] = {"StudyDate": "20200101"}, {"StudyDate": "20220101"}
    years, source = lg.resolve_interval(a, b, 5.0)
    assert years == pytest.approx(731 / 365.25) and source == "dicom dates"
    assert lg.resolve_interval(ph.image, ph.image, 1.5) == (1.5, "--interval-years")
    assert lg.resolve_interval(ph.image, ph.image, None)[0] is None


# ----------------------------------------------------------------------------------------------------------------------
# edge-profile boundary shift on a smooth synthetic object

_RADII = np.array([11.0, 9.5, 8.5])  # ellipsoid semi-axes (voxels)
_CENTRE = np.array([17.3, 16.6, 16.9])


def _ellipsoid(scale: float, *, seed: int, noise: float = 0.02, shape: int = 34) -> tuple[np.ndarray, np.ndarray]:
    """Image and tissue fraction of an ellipsoid with semi-axes ``scale * _RADII`` (partial volume, noise).

    The fraction is the exact coverage of each voxel, estimated on a 4x finer grid; the image is
    ``0.3 + 0.7 * fraction`` plus Gaussian noise of sd ``noise`` (the object's contrast is 0.7).
    """
    fine = 4
    axis = (np.arange(shape * fine) + 0.5) / fine - 0.5
    x, y, z = np.meshgrid(axis, axis, axis, indexing="ij", sparse=True)
    radii = scale * _RADII
    inside = ((x - _CENTRE[0]) / radii[0]) ** 2 + ((y - _CENTRE[1]) / radii[1]) ** 2 + (
        (z - _CENTRE[2]) / radii[2]
    ) ** 2 <= 1.0
    fraction = inside.reshape(shape, fine, shape, fine, shape, fine).mean(axis=(1, 3, 5))
    rng = np.random.default_rng(seed)
    return 0.3 + 0.7 * fraction + noise * rng.standard_normal(fraction.shape), fraction


def _everywhere(fraction: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    inside = np.ones(fraction.shape, bool)
    return inside, inside


def test_boundary_shift_measures_a_known_sub_voxel_shrink() -> None:
    scale = 0.985  # every edge moves inwards by 0.13-0.17 voxel
    truth = 100.0 * (scale**3 - 1.0)  # -4.43 %
    base, w = _ellipsoid(1.0, seed=1)
    follow, _ = _ellipsoid(scale, seed=2)
    result = bs.boundary_shift(base, follow, w, masks=_everywhere(w))
    assert result.pbvc_percent == pytest.approx(truth, abs=0.1 * abs(truth))
    assert result.measured_points == result.edge_points > bs.MIN_EDGE_POINTS
    assert 0.8 < result.gain < 1.2 and 0.8 < result.area_factor < 1.2
    assert result.mean_shift_voxels == pytest.approx(-0.015 * float(np.mean(_RADII)), abs=0.05)


def test_boundary_shift_swapped_scans_negate() -> None:
    scale = 0.985
    base, w_base = _ellipsoid(1.0, seed=1)
    follow, w_follow = _ellipsoid(scale, seed=2)
    forward = bs.boundary_shift(base, follow, w_base, masks=_everywhere(w_base))
    # the same edges measured the other way: every profile shift negates exactly, only the gain is re-measured
    swapped = bs.boundary_shift(follow, base, w_base, masks=_everywhere(w_base))
    assert forward.pbvc_percent < -3.0
    assert swapped.mean_shift_voxels == pytest.approx(-forward.mean_shift_voxels, rel=1e-9)
    assert swapped.pbvc_percent == pytest.approx(-forward.pbvc_percent, rel=0.03)
    # swapped roles (the follow-up's own tissue map): a growth of 0.14 voxel, measured about 8 % low
    growth = 100.0 * (scale**-3 - 1.0)
    backward = bs.boundary_shift(follow, base, w_follow, masks=_everywhere(w_follow)).pbvc_percent
    assert backward == pytest.approx(growth, rel=0.12)


def test_boundary_shift_rescan_is_near_zero() -> None:
    base, w = _ellipsoid(1.0, seed=1)
    for seed in (2, 3, 4):
        rescan, _ = _ellipsoid(1.0, seed=seed)
        assert abs(bs.boundary_shift(base, rescan, w, masks=_everywhere(w)).pbvc_percent) < 0.15


def test_boundary_shift_ignores_gain_and_offset_of_the_followup() -> None:
    base, w = _ellipsoid(1.0, seed=1)
    follow, _ = _ellipsoid(0.99, seed=2)
    plain = bs.boundary_shift(base, follow, w, masks=_everywhere(w))
    scaled = bs.boundary_shift(base, 2.5 * follow + 40.0, w, masks=_everywhere(w))
    assert plain.pbvc_percent < -1.0
    assert scaled.pbvc_percent == pytest.approx(plain.pbvc_percent, abs=1e-6)
    assert scaled.gain == pytest.approx(plain.gain, abs=1e-6)


def test_boundary_shift_does_not_measure_edges_at_the_mask_boundary() -> None:
    base, w = _ellipsoid(1.0, seed=1)
    follow, _ = _ellipsoid(0.985, seed=2)
    cut = np.zeros(w.shape, bool)
    cut[: int(_CENTRE[0]) + 4] = True  # the edges of the cap beyond x = 21 face the mask's boundary
    result = bs.boundary_shift(base, follow, w, masks=(cut, np.ones(w.shape, bool)))
    assert result.measured_points < 0.75 * result.edge_points
    full = bs.boundary_shift(base, follow, w, masks=_everywhere(w))
    share = result.pbvc_percent / full.pbvc_percent  # unmeasured edges count as not moving
    assert 0.5 < share < 0.75


def test_boundary_shift_refuses_too_few_edges() -> None:
    w = np.zeros((20, 20, 20))
    w[8:12, 8:12, 8:12] = 1.0  # 56 edge voxels
    image = 0.3 + 0.7 * w
    with pytest.raises(InputError, match=r"Expected at least 500 brain-tissue edge points.*found 56"):
        bs.boundary_shift(image, image, w, masks=_everywhere(w))
    base, big = _ellipsoid(1.0, seed=1)
    nowhere = np.zeros(big.shape, bool)
    with pytest.raises(InputError, match="found 0 "):
        bs.boundary_shift(base, base, big, masks=(nowhere, nowhere))
    with pytest.raises(InputError, match="one 3D grid"):
        bs.boundary_shift(base, base[:-1], big, masks=_everywhere(big))


def test_profile_shift_is_antisymmetric_and_sub_sample() -> None:
    t = np.arange(-16, 17) * 0.25
    base = np.stack([-np.tanh(t - 0.1 * k) for k in range(5)])
    follow = np.stack([-np.tanh(t - 0.1 * k + 0.37) for k in range(5)])
    forward = bs.profile_shifts(base, follow, step=0.25, window=2.0, max_shift=2.0)
    backward = bs.profile_shifts(follow, base, step=0.25, window=2.0, max_shift=2.0)
    np.testing.assert_allclose(forward, -0.37, atol=0.03)
    np.testing.assert_allclose(backward, -forward, atol=1e-12)


# ----------------------------------------------------------------------------------------------------------------------
# the command


def _save(image: Image, path: Path) -> Path:
    nib.save(nib.Nifti1Image(image.array, image.affine), path)
    return path


def _fast_pipeline(case: Case, config: Any, *, progress: Any = None) -> Case:
    """Stand-in for ``run_pipeline``: the non-zero brain mask and k-means tissues (no MNI registration)."""
    from mriquant.pipeline import nonzero_mask_step
    from mriquant.segment import get_segmenter, segment_step

    return segment_step(nonzero_mask_step(case), get_segmenter("kmeans")(None))


def test_cli_writes_the_change_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import mriquant.pipeline

    monkeypatch.setattr(mriquant.pipeline, "run_pipeline", _fast_pipeline)
    monkeypatch.setattr(lg, "LongitudinalOptions", lambda **kw: dataclasses.replace(_FAST, **kw))
    baseline, followup, _ = _phantom_pair(0.99, rotation=(0.0, 0.0, 0.0))
    a, b = _save(baseline.image, tmp_path / "a.nii.gz"), _save(followup.image, tmp_path / "b.nii.gz")
    out = tmp_path / "out"
    code = main(["longitudinal", str(a), str(b), "-o", str(out), "--skullstripped", "--no-structures",
                 "--interval-years", "2"])  # fmt: skip
    assert code == 0
    *lines, final = capsys.readouterr().err.splitlines()  # one line per step, the follow-up's named as in the manifest
    steps = json.loads((out / "manifest.json").read_text())["steps"]
    done = [re.fullmatch(r"mriquant longitudinal: (.+) done \(\d+\.\d s\)", line) for line in lines]
    assert all(done) and sorted(m[1] for m in done if m) == sorted(s["name"] for s in steps)
    assert {"read", "followup read", "followup n4", "longitudinal", "write", "report"} <= {s["name"] for s in steps}
    assert re.fullmatch(rf"mriquant longitudinal: wrote {re.escape(str(out))} \(PBVC -?\d+\.\d\d %, \d+\.\d s\)", final)
    assert {p.name for p in out.iterdir()} >= {"change.json", "change.csv", "report.html", "report.pdf",
                                               "manifest.json"}  # fmt: skip
    doc = json.loads((out / "change.json").read_text())
    assert doc["pbvc_percent"] < 0 and doc["interval_years"] == 2.0 and doc["interval_source"] == "--interval-years"
    assert doc["pbvc_method"] == lg.PBVC_METHODS["edge"]  # the default
    assert doc["registration"]["boundary_shift"]["pbvc_percent"] == pytest.approx(doc["pbvc_percent"], abs=1e-3)
    assert doc["annualised_pbvc_percent"] == pytest.approx(doc["pbvc_percent"] / 2, abs=1e-3)
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["command"] == "longitudinal" and "change.json" in manifest["outputs"]


def test_cli_pbvc_method_flag(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import mriquant.pipeline

    seen: list[lg.LongitudinalOptions] = []

    def record(baseline: Case, followup: Case, *, options: lg.LongitudinalOptions) -> lg.ChangeResult:
        seen.append(options)
        raise InputError("Expected nothing more: options recorded.")

    monkeypatch.setattr(mriquant.pipeline, "run_pipeline", _fast_pipeline)
    monkeypatch.setattr(lg, "measure_change", record)
    baseline, followup, _ = _phantom_pair(0.99, rotation=(0.0, 0.0, 0.0))
    a, b = _save(baseline.image, tmp_path / "a.nii.gz"), _save(followup.image, tmp_path / "b.nii.gz")
    common = [str(a), str(b), "--skullstripped", "--no-structures"]
    assert main(["-q", "longitudinal", *common, "-o", str(tmp_path / "o1"), "--pbvc-method", "jacobian"]) == 2
    assert main(["-q", "longitudinal", *common, "-o", str(tmp_path / "o2")]) == 2
    assert [o.pbvc_method for o in seen] == ["jacobian", "edge"]
    assert main(["longitudinal", *common, "-o", str(tmp_path / "o3"), "--pbvc-method", "segmentation"]) == 2
    assert len(seen) == 2 and "invalid choice: 'segmentation'" in capsys.readouterr().err
    with pytest.raises(InputError, match="pbvc_method"):
        lg.LongitudinalOptions(pbvc_method="segmentation")  # type: ignore[arg-type]


def _expect_refused(argv: list[str], out: Path, capsys: pytest.CaptureFixture[str], *, progress: bool = False) -> str:
    """Exit 2, nothing written, one error line: alone, or (``progress``) after lines of steps that finished."""
    assert main(argv) == 2
    *done, err = capsys.readouterr().err.splitlines()
    assert err.startswith("mriquant longitudinal: error: Expected")
    assert all(re.fullmatch(r"mriquant longitudinal: [\w: ]+ done \(\d+\.\d s\)", line) for line in done), done
    assert bool(done) == progress
    assert not out.exists()
    return err


def test_cli_refuses_a_2d_image(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    ph = make_phantom(spacing=(4.0, 4.0, 4.0), seed=1)
    good = _save(ph.image, tmp_path / "a.nii.gz")
    flat = tmp_path / "flat.nii.gz"
    nib.save(nib.Nifti1Image(ph.image.array[:, :, 20], np.eye(4)), flat)
    out = tmp_path / "out"
    _expect_refused(["longitudinal", str(good), str(flat), "-o", str(out)], out, capsys)


def test_cli_refuses_a_non_brain(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    ph = make_phantom(spacing=(4.0, 4.0, 4.0), seed=1)
    good = _save(ph.image, tmp_path / "a.nii.gz")
    blob = np.zeros(ph.image.shape, np.float32)
    blob[20:24, 20:24, 20:24] = 100.0  # 4 mL of signal: not a brain
    other = _save(ph.image.with_array(blob), tmp_path / "b.nii.gz")
    out = tmp_path / "out"
    argv = ["longitudinal", str(good), str(other), "-o", str(out), "--skullstripped"]
    err = _expect_refused(argv, out, capsys, progress=True)  # refused in the follow-up's first step, after reading
    assert "brain" in err


def test_cli_refuses_a_bad_interval(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    ph = make_phantom(spacing=(4.0, 4.0, 4.0), seed=1)
    a = _save(ph.image, tmp_path / "a.nii.gz")
    out = tmp_path / "out"
    _expect_refused(["longitudinal", str(a), str(a), "-o", str(out), "--interval-years", "-1"], out, capsys)


@pytest.mark.skipif(not DATA.is_dir(), reason=f"BrainWeb crisp models not found at {DATA}")
@pytest.mark.xfail(reason="at 3 mm neither the edge method (default: -1.81 % for -6.47 %) nor the SyN Jacobian "
                   "(-2.04 %) resolves a 0.5 mm thinning of the whole cortex; at 1 mm see "
                   "bench/longitudinal_results/latest.md", strict=True)
def test_brainweb_thinning_at_3mm() -> None:
    from scipy import ndimage

    from mriquant.io import read_labels
    from mriquant.simulate.brainweb import simulate

    labels = read_labels(DATA / "subject04_crisp_v.mnc.gz")
    base = simulate(labels, contrast="T1", noise=0.03, bias=0.2, resolution_mm=3.0, seed=1)
    layer = (labels.array == 2) & ndimage.binary_dilation(labels.array == 1)  # one 0.5 mm GM layer next to CSF
    thinned = labels.with_array(np.where(layer, 1, labels.array))
    truth = 100.0 * (np.isin(thinned.array, (2, 3)).sum() / np.isin(labels.array, (2, 3)).sum() - 1.0)
    follow = simulate(thinned, contrast="T1", noise=0.03, bias=0.3, resolution_mm=3.0, seed=2)
    move = _rigid((3.0, 0.0, -2.0), (2.0, 0.0, 0.0))
    baseline = _case(base.image, base.brain_mask, base.tissue)
    followup = _case(_moved(follow.image, move), _moved(follow.brain_mask, move))
    result = lg.measure_change(baseline, followup, options=_FAST)
    assert result.pbvc_percent < 0
    assert result.pbvc_percent == pytest.approx(truth, abs=max(0.5, 0.3 * abs(truth)))


def test_cli_pbvc_choices_are_the_library_methods() -> None:
    """The command line offers exactly the PBVC methods the library knows, with the options' default."""
    from mriquant.cli import _build_parser

    parser = _build_parser(["longitudinal"])
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices["longitudinal"]
    action = next(a for a in sub._actions if a.dest == "pbvc_method")
    assert set(action.choices or ()) == set(lg.PBVC_METHODS)
    assert action.default == lg.LongitudinalOptions().pbvc_method
