"""Evaluation against a reference: metrics by hand, other grids, label maps and the CLI."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import numpy.typing as npt
import pytest

from mriquant.cli import main
from mriquant.core.errors import InputError
from mriquant.core.geometry import reorient, resample_to
from mriquant.core.image import LabelImage
from mriquant.core.labels import freesurfer
from mriquant.evaluate import (
    LabelMetrics,
    align_prediction,
    apply_map,
    dice,
    evaluate_labels,
    grids_overlap,
    load_map,
    shipped_maps,
    summarise,
    surface_distances,
)

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
MICCAI = DATA / "miccai2012"
needs_data = pytest.mark.skipif(not DATA.exists(), reason="../shared/data not present")

SPACING = (1.0, 1.0, 2.5)


def _cube(shape: tuple[int, int, int], start: tuple[int, int, int], size: int = 10) -> npt.NDArray[np.int32]:
    a = np.zeros(shape, np.int32)
    a[tuple(slice(s, s + size) for s in start)] = 1
    return a


def _image(array: npt.NDArray[np.int32], spacing: tuple[float, float, float] = SPACING) -> LabelImage:
    return LabelImage(array, np.diag([*spacing, 1.0]))


def _only(metrics: list[LabelMetrics], label: int = 1) -> LabelMetrics:
    found = [m for m in metrics if m.label == label]
    assert len(found) == 1
    return found[0]


def _phantom(shape: tuple[int, int, int] = (48, 52, 40), seed: int = 0) -> npt.NDArray[np.int32]:
    """Three overlapping random ellipsoids (labels 1-3), fixed seed."""
    rng = np.random.default_rng(seed)
    grid = np.indices(shape).astype(float)
    out = np.zeros(shape, np.int32)
    for label in (1, 2, 3):
        centre = rng.uniform(0.35, 0.65, 3) * np.array(shape)
        radii = rng.uniform(5.0, 11.0, 3)
        inside = (((grid - centre[:, None, None, None]) / radii[:, None, None, None]) ** 2).sum(0) <= 1
        out[inside] = label
    return out


# --------------------------------------------------------------------------- analytic cases


def test_identical_masks() -> None:
    img = _image(_cube((16, 16, 16), (3, 3, 3)))
    m = _only(evaluate_labels(img, img))
    assert (m.dice, m.jaccard, m.hd95_mm, m.assd_mm) == (1.0, 1.0, 0.0, 0.0)
    assert m.volume_pred_ml == m.volume_truth_ml == pytest.approx(1000 * 2.5 / 1000)
    assert (m.volume_diff_ml, m.volume_diff_percent, m.reason) == (0.0, 0.0, None)


def test_cube_shifted_along_the_anisotropic_axis() -> None:
    # A 10^3 cube and the same cube shifted by 2 voxels along k, spacing (1, 1, 2.5) mm.
    # Overlap 10*10*8: Dice = 2*800/2000 = 0.8, Jaccard = 800/1200.
    # Surface of each cube: 1000 - 8^3 = 488 voxels. From A to B (and by symmetry B to A):
    #   bottom slice k=0 (100 voxels): 2 slices to B's bottom face -> 5 mm
    #   side ring k=1 (36): 2.5 mm; side rings k=2..8 (7*36 = 252): on B's side faces -> 0
    #   top slice k=9: its ring (36) -> 0; inner rings of 28/20/12/4 voxels lie 1/2/3/4 mm
    #   (in-plane) from B's side faces, closer than B's top face (5 mm).
    # Pooled (976 values): 0 x576, 1 x56, 2 x40, 2.5 x72, 3 x24, 4 x8, 5 x200. The 95th
    # percentile sits at rank 0.95*975 = 926.25, inside the run of 5s (ranks 776-975): 5 mm
    # (2 mm if the spacing were ignored). ASSD = 2*(28+40+36+16+90+500)/976 = 710/488 mm.
    a = _cube((16, 16, 16), (3, 3, 3))
    b = _cube((16, 16, 16), (3, 3, 5))
    d = surface_distances(b.astype(bool), a.astype(bool), spacing=SPACING)
    values, counts = np.unique(d, return_counts=True)
    expected = {0.0: 576, 1.0: 56, 2.0: 40, 2.5: 72, 3.0: 24, 4.0: 8, 5.0: 200}
    assert dict(zip(values.tolist(), counts.tolist(), strict=True)) == expected
    m = _only(evaluate_labels(_image(b), _image(a)))
    assert m.dice == pytest.approx(0.8)
    assert m.jaccard == pytest.approx(2 / 3)
    assert m.hd95_mm == pytest.approx(5.0)
    assert m.assd_mm == pytest.approx(710 / 488)
    assert m.volume_diff_ml == 0.0
    assert dice(a, b) == pytest.approx(0.8)


def test_hd95_ignores_a_single_outlier_but_assd_does_not() -> None:
    # Truth = cube + one voxel 8 slices (20 mm) above the cube's top face. Pooled distances:
    # 488 zeros (pred -> truth), 488 zeros + one 20 mm (truth -> pred): HD95 = 0, ASSD = 20/977.
    pred = _cube((16, 16, 24), (3, 3, 3))
    truth = pred.copy()
    truth[8, 8, 20] = 1
    m = _only(evaluate_labels(_image(pred), _image(truth)))
    assert m.hd95_mm == 0.0
    assert m.assd_mm == pytest.approx(20 / 977)
    assert surface_distances(pred > 0, truth > 0, spacing=SPACING).max() == pytest.approx(20.0)
    assert m.dice == pytest.approx(2000 / 2001)


def test_disjoint_masks() -> None:
    # 4^3 cubes 5 voxels apart along i (spacing 1 mm there): no overlap, every distance >= 5 mm.
    a = _cube((16, 8, 8), (0, 2, 2), size=4)
    b = _cube((16, 8, 8), (8, 2, 2), size=4)
    m = _only(evaluate_labels(_image(b), _image(a)))
    assert (m.dice, m.jaccard) == (0.0, 0.0)
    assert m.hd95_mm is not None and m.assd_mm is not None
    assert m.assd_mm >= 5.0 and m.hd95_mm >= 5.0
    assert dice(a, b) == 0.0


def test_label_missing_from_one_map() -> None:
    truth = _cube((16, 16, 16), (1, 1, 1), size=5)
    truth[8:12, 8:12, 8:12] = 2
    pred = np.where(truth == 2, 0, truth)
    pred[0, 15, 15] = 7  # only in pred
    metrics = evaluate_labels(_image(pred), _image(truth))
    assert [m.label for m in metrics] == [1, 2, 7]
    missing = _only(metrics, 2)
    assert (missing.dice, missing.jaccard, missing.hd95_mm, missing.assd_mm) == (0.0, 0.0, None, None)
    assert missing.reason is not None and "absent from the prediction" in missing.reason
    assert missing.volume_pred_ml == 0.0 and missing.volume_diff_percent == pytest.approx(-100.0)
    extra = _only(metrics, 7)
    assert extra.dice == 0.0 and extra.hd95_mm is None and extra.volume_diff_percent is None
    assert extra.reason is not None and "absent from the reference" in extra.reason
    assert _only(metrics, 1).dice == 1.0
    mean = summarise(metrics)
    assert mean["dice"] == pytest.approx(1 / 3) and mean["hd95_mm"] == 0.0
    assert mean["n_distances_undefined"] == 2


def test_labels_option_skips_labels_absent_from_both() -> None:
    img = _image(_cube((16, 16, 16), (3, 3, 3)))
    assert [m.label for m in evaluate_labels(img, img, labels=[1, 99, 5])] == [1]
    with pytest.raises(InputError, match="Expected label ids >= 1"):
        evaluate_labels(img, img, labels=[0, 1])


def test_dice_of_empty_masks_is_nan_and_shapes_must_match() -> None:
    assert np.isnan(dice(np.zeros(4), np.zeros(4)))
    with pytest.raises(InputError, match="same shape"):
        dice(np.zeros(4), np.zeros(5))


def test_negative_labels_are_rejected() -> None:
    a = _cube((8, 8, 8), (1, 1, 1), size=3)
    a[0, 0, 0] = -1
    with pytest.raises(InputError, match="non-negative"):
        evaluate_labels(_image(a), _image(a))


def test_crop_does_not_change_distances() -> None:
    # Labels touching the array border and far-apart fragments: the cropped computation must
    # equal the whole-volume one.
    truth = _phantom()
    truth[0:3, :, 0:4] = 3  # touches three borders
    pred = np.roll(truth, (2, -1, 1), axis=(0, 1, 2))
    spacing = (0.8, 1.1, 1.7)
    for m in evaluate_labels(_image(pred, spacing), _image(truth, spacing)):
        full = surface_distances(pred == m.label, truth == m.label, spacing=spacing)
        assert m.hd95_mm == pytest.approx(float(np.percentile(full, 95)))
        assert m.assd_mm == pytest.approx(float(full.mean()))


# --------------------------------------------------------------------------- other grids


AFFINE = np.array([[-0.9, 0, 0, 40.0], [0, 1.1, 0, -30.0], [0, 0, 1.4, -20.0], [0, 0, 0, 1]])


@pytest.mark.parametrize("codes", ["RAS", "PIL", "SLA", "ILP"])
def test_prediction_in_another_orientation_is_exact(codes: str) -> None:
    truth = LabelImage(_phantom(), AFFINE)
    pred = reorient(truth, codes)
    assert not pred.same_grid(truth)
    aligned, resampled = align_prediction(pred, truth)
    assert resampled and np.array_equal(aligned.array, truth.array)
    for m in evaluate_labels(pred, truth):
        assert (m.dice, m.hd95_mm, m.volume_diff_ml) == (1.0, 0.0, 0.0)


def _spheres() -> npt.NDArray[np.int32]:
    """Label 1: sphere of radius 8 mm (2.1 mL); label 2: radius 16 mm (17 mL); 1 mm grid."""
    grid = np.indices((64, 64, 64)).astype(float)
    out = np.zeros((64, 64, 64), np.int32)
    for label, centre, radius in ((1, (20.3, 31.6, 30.2), 8), (2, (42.7, 32.1, 33.9), 16)):
        out[((grid - np.array(centre)[:, None, None, None]) ** 2).sum(0) <= radius**2] = label
    return out


def test_prediction_on_a_twice_coarser_grid() -> None:
    # Truth on a 1 mm grid; pred = truth sampled (nearest) on a 2 mm grid offset by 0.25 mm so no
    # sample is a tie, then evaluated (resampled back onto the 1 mm grid). Measured: Dice 0.8955
    # (r = 8 mm) and 0.9469 (r = 16 mm), HD95 1.0 mm, volumes within 0.3 %.
    truth = LabelImage(_spheres(), np.eye(4))
    coarse = np.diag([2.0, 2.0, 2.0, 1.0])
    coarse[:3, 3] = 0.25
    pred = resample_to(truth, (32, 32, 32), coarse)
    small, large = evaluate_labels(pred, truth)
    assert 0.895 <= small.dice < 1.0 and 0.946 <= large.dice < 1.0
    for m in (small, large):
        assert m.hd95_mm == 1.0
        assert m.volume_diff_percent is not None and abs(m.volume_diff_percent) < 0.3


def test_disjoint_fields_of_view_are_an_error() -> None:
    truth = LabelImage(_phantom(), np.eye(4))
    far = np.eye(4)
    far[1, 3] = 500.0
    with pytest.raises(InputError, match="overlap in world space"):
        evaluate_labels(LabelImage(truth.array, far), truth)


def test_grids_overlap_uses_the_oriented_boxes() -> None:
    # A 45-degree rotated slab whose axis-aligned bounding box overlaps the cube but the slab
    # itself does not; then the same slab moved onto the cube.
    cube = LabelImage(np.zeros((10, 10, 10), np.int32), np.eye(4))
    c, s = np.cos(np.pi / 4), np.sin(np.pi / 4)
    rot = np.array([[c, -s, 0, 0], [s, c, 0, 0], [0, 0, 1, 0], [0, 0, 0, 1]])
    slab = np.zeros((40, 1, 10), np.int32)
    rot[:3, 3] = [-20.0, -8.0, 0.0]  # centre line y = x + 12 passes 1.4 mm from the cube's corner
    corners = np.array([[i, j, 0] for i in (-0.5, 39.5) for j in (-0.5, 0.5)]) @ rot[:3, :3].T
    lo, hi = (corners + rot[:3, 3]).min(axis=0), (corners + rot[:3, 3]).max(axis=0)
    assert np.all(lo[:2] < 9.5) and np.all(hi[:2] > -0.5)  # the bounding boxes do overlap
    assert not grids_overlap(LabelImage(slab, rot), cube)
    rot[:3, 3] = [-20.0, -20.0, 0.0]  # centre line y = x, through the cube
    assert grids_overlap(LabelImage(slab, rot), cube)
    touching = np.eye(4)
    touching[0, 3] = 10.0
    assert not grids_overlap(LabelImage(cube.array, touching), cube)


# --------------------------------------------------------------------------- label maps


def test_shipped_maps() -> None:
    maps = shipped_maps()
    assert set(maps) == {"miccai2012-to-freesurfer", "miccai2012-to-tissues"}
    assert all(p.is_file() and p.suffix == ".tsv" for p in maps.values())


def test_miccai_to_freesurfer_decisions() -> None:
    m = load_map("miccai2012-to-freesurfer")
    # fmt: off
    expected = {
        4: 14, 11: 15, 15: 72, 23: 58, 30: 26, 31: 54, 33: 54, 32: 18, 34: 18, 35: 16, 36: 50,
        37: 11, 38: 47, 39: 8, 40: 46, 41: 7, 42: 42, 43: 3, 44: 41, 45: 2, 46: 24, 47: 53, 48: 17,
        49: 44, 50: 5, 51: 43, 52: 4, 53: 0, 54: 0, 55: 52, 56: 13, 57: 51, 58: 12, 59: 49, 60: 10,
        61: 60, 62: 28, 63: 62, 64: 30, 65: 3, 66: 42, 69: 85, 70: 0, 71: 172, 72: 172, 73: 172,
        74: 0, 75: 28, 76: 60,
    }
    # fmt: on
    assert {k: m[k] for k in expected} == expected
    assert all(m[k] == (42 if k % 2 == 0 else 3) for k in range(100, 208))
    table = freesurfer()
    assert all(v == 0 or v in table for v in m.values())
    assert set(load_map("miccai2012-to-tissues").values()) == {0, 1, 2, 3}


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "map.tsv"
    path.write_text(text, encoding="utf-8")
    return path


def test_load_map_from_a_file(tmp_path: Path) -> None:
    path = _write(tmp_path, "# comment\n\n1\t10\t# one\n2 20\n")
    assert load_map(path) == {1: 10, 2: 20}
    assert load_map(str(path)) == {1: 10, 2: 20}


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("1\t10\nx\t2\n", "line 2 of map.tsv"),
        ("1\t2.5\n", "line 1 of map.tsv"),
        ("1\t2\t3\n", "line 1 of map.tsv"),
        ("-1\t2\n", "line 1 of map.tsv"),
        ("1\t2\n1\t3\n", "one target per source id"),
        ("# nothing\n", "found none"),
    ],
)
def test_load_map_rejects_bad_files(tmp_path: Path, text: str, message: str) -> None:
    with pytest.raises(InputError, match=message):
        load_map(_write(tmp_path, text))


def test_load_map_missing() -> None:
    with pytest.raises(InputError, match="shipped map name"):
        load_map("no-such-map")


def test_apply_map() -> None:
    img = LabelImage(np.array([0, 47, 48, 99, 47], np.int16).reshape(1, 1, 5), np.eye(4))
    out = apply_map(img, {47: 53, 48: 17, 5000: 1}, name="test")
    assert out.array.ravel().tolist() == [0, 53, 17, 0, 53]
    assert out.array.dtype == np.int32 and out.meta["label_map"] == "test"
    assert np.array_equal(out.affine, img.affine)
    with pytest.raises(InputError, match="mapping ids"):
        apply_map(img, {47: -1})


def _glm_paths() -> list[Path]:
    return sorted((MICCAI / "train").glob("*_glm.nii.gz"))


@needs_data
def test_every_training_label_is_mapped() -> None:
    present: set[int] = set()
    for path in _glm_paths():
        present |= {int(v) for v in np.unique(np.asanyarray(nib.load(path).dataobj))}
    assert len(_glm_paths()) == 15 and len(present) > 140
    for name in ("miccai2012-to-freesurfer", "miccai2012-to-tissues"):
        assert present - {0} <= set(load_map(name)), name


@needs_data
def test_tissue_map_reproduces_classified() -> None:
    # Measured on 1000: 99.79% of all voxels agree (99.22% of the voxels labelled in either);
    # every difference is ventral DC (61/62), GM in _classified and WM in the CSV's Class column.
    from mriquant.io import read_labels

    glm = read_labels(MICCAI / "train" / "1000_glm.nii.gz")
    classified = read_labels(MICCAI / "train" / "1000_classified.nii.gz").array
    mapped = apply_map(glm, load_map("miccai2012-to-tissues")).array
    differ = mapped != classified
    assert np.array_equal(differ, np.isin(glm.array, [61, 62]))
    assert np.all(classified[differ] == 2) and np.all(mapped[differ] == 3)
    assert 1 - differ.mean() >= 0.9979
    assert 1 - differ[(mapped > 0) | (classified > 0)].mean() >= 0.9922


# --------------------------------------------------------------------------- command line


def _save(path: Path, array: npt.NDArray[np.int32], affine: npt.NDArray[np.float64]) -> Path:
    nib.save(nib.Nifti1Image(array.astype(np.int16), affine), str(path))
    return path


@pytest.fixture
def pair(tmp_path: Path) -> tuple[Path, Path]:
    affine = np.diag([*SPACING, 1.0])
    truth = _save(tmp_path / "truth.nii.gz", _cube((16, 16, 16), (3, 3, 3)) * 17, affine)
    pred = _save(tmp_path / "pred.nii.gz", _cube((16, 16, 16), (3, 3, 5)) * 17, affine)
    return pred, truth


def _run_json(argv: list[str], capsys: pytest.CaptureFixture[str]) -> dict[str, Any]:
    assert main(argv) == 0
    result: dict[str, Any] = json.loads(capsys.readouterr().out)
    return result


def test_cli_json(pair: tuple[Path, Path], capsys: pytest.CaptureFixture[str]) -> None:
    result = _run_json(["evaluate", str(pair[0]), str(pair[1]), "--json"], capsys)
    assert result["resampled"] is False
    (row,) = result["labels"]
    assert row["label"] == 17 and row["name"] == "Left-Hippocampus"
    assert row["dice"] == pytest.approx(0.8) and row["hd95_mm"] == pytest.approx(5.0)
    assert row["volume_truth_ml"] == pytest.approx(2.5) and "reason" not in row
    assert result["mean"]["dice"] == pytest.approx(0.8)


def test_cli_text(pair: tuple[Path, Path], capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["evaluate", str(pair[0]), str(pair[1])]) == 0
    out = capsys.readouterr().out.splitlines()
    row = next(line for line in out if line.split()[:1] == ["17"])
    assert row.split()[1:5] == ["Left-Hippocampus", "0.8000", "0.6667", "5.00"]
    assert out[-1].split()[:3] == ["mean", "(1", "labels)"]


def test_cli_resamples_and_maps(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # Truth in MICCAI ids (47/48 hippocampus), pred in FreeSurfer ids (53/17) on a flipped grid.
    truth_ids = _phantom()
    truth_ids = np.select([truth_ids == 1, truth_ids == 2, truth_ids == 3], [47, 48, 74], 0)
    truth = LabelImage(truth_ids.astype(np.int32), AFFINE)
    fs = np.select([truth_ids == 47, truth_ids == 48], [53, 17], 0).astype(np.int32)
    pred = reorient(LabelImage(fs, AFFINE), "PIR")
    truth_path = _save(tmp_path / "truth.nii.gz", truth.array, truth.affine)
    pred_path = _save(tmp_path / "pred.nii.gz", pred.array, pred.affine)
    argv = ["evaluate", str(pred_path), str(truth_path), "--map", "miccai2012-to-freesurfer", "--json"]
    result = _run_json(argv, capsys)
    assert result["resampled"] is True and result["label_names"] == "freesurfer"
    rows = {r["label"]: r for r in result["labels"]}
    assert set(rows) == {17, 53}  # 74 (a marker) maps to background
    assert rows[53]["name"] == "Right-Hippocampus" and rows[53]["dice"] == 1.0
    result = _run_json([*argv, "--labels", "17"], capsys)
    assert [r["label"] for r in result["labels"]] == [17]


def _run_error(argv: list[str], capsys: pytest.CaptureFixture[str]) -> str:
    assert main(argv) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("mriquant evaluate: error: Expected")
    return lines[0]


def test_cli_missing_file(pair: tuple[Path, Path], capsys: pytest.CaptureFixture[str]) -> None:
    line = _run_error(["evaluate", str(pair[0].with_name("nope.nii.gz")), str(pair[1])], capsys)
    assert "nope.nii.gz" in line


def test_cli_bad_map(pair: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = _write(tmp_path, "47\t53\n48\tseventeen\n")
    line = _run_error(["evaluate", str(pair[0]), str(pair[1]), "--map", str(bad)], capsys)
    assert "line 2 of map.tsv" in line
    line = _run_error(["evaluate", str(pair[0]), str(pair[1]), "--map", "no-such-map"], capsys)
    assert "miccai2012-to-freesurfer" in line


def test_cli_no_labels_to_compare(pair: tuple[Path, Path], capsys: pytest.CaptureFixture[str]) -> None:
    line = _run_error(["evaluate", str(pair[0]), str(pair[1]), "--labels", "3"], capsys)
    assert "--labels" in line
