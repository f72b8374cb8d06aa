"""The working grid: to_working_grid, GridRecord, to_native and label-aware to_native_labels."""

from __future__ import annotations

import json
from typing import Any

import numpy as np
import pytest

from mriquant.core.errors import GeometryError, InputError
from mriquant.core.geometry import reorient
from mriquant.core.image import Image, LabelImage
from mriquant.preprocess import resample
from mriquant.preprocess.resample import GridRecord, to_native, to_native_labels, to_working_grid
from mriquant.testing import make_phantom

FOV = (120.0, 140.0, 120.0)


def _dice(a: np.ndarray, b: np.ndarray, label: int) -> float:
    x, y = a == label, b == label
    return float(2.0 * (x & y).sum() / (x.sum() + y.sum()))


def _min_dice(a: LabelImage, b: LabelImage) -> float:
    return min(_dice(a.array, b.array, label) for label in b.labels)


def test_native_1mm_ras_is_the_working_grid() -> None:
    ph = make_phantom(spacing=(1.0, 1.0, 1.0), field_of_view=FOV, seed=0)
    work, record = to_working_grid(ph.image)
    assert work.shape == ph.image.shape and np.array_equal(work.affine, ph.image.affine)
    assert np.array_equal(work.array, ph.image.array)
    labels, _ = to_working_grid(ph.structures)
    back = to_native(labels, record)
    assert np.array_equal(back.array, ph.structures.array) and back.array.dtype == ph.structures.array.dtype
    assert GridRecord.from_dict(json.loads(json.dumps(record.as_dict()))) == record


def test_lia_1mm_round_trip_is_a_pure_permutation() -> None:
    ph = make_phantom(spacing=(1.0, 1.0, 1.0), field_of_view=FOV, orientation="LIA", seed=0)
    work, record = to_working_grid(ph.structures)
    ras = reorient(ph.structures, "RAS")
    assert work.axcodes == "RAS" and work.shape == (120, 140, 120)
    assert np.array_equal(work.array, ras.array) and np.allclose(work.affine, ras.affine, atol=1e-9)
    for method in ("nearest", "label-aware"):
        back = to_native_labels(work, record, method=method)
        assert np.array_equal(back.array, ph.structures.array)
        assert back.shape == ph.structures.shape and np.array_equal(back.affine, ph.structures.affine)
    image_back = to_native(to_working_grid(ph.image)[0], record)
    assert np.array_equal(image_back.array, ph.image.array)


@pytest.fixture(scope="module")
def thick() -> tuple[LabelImage, LabelImage]:
    """The same phantom anatomy on a 1 x 1 x 5 mm oblique grid and on the matching 1 mm grid."""
    kwargs: dict[str, Any] = {"rotation": (10.0, 5.0, 0.0), "field_of_view": FOV, "seed": 0}
    coarse = make_phantom(spacing=(1.0, 1.0, 5.0), **kwargs).structures
    fine = make_phantom(spacing=(1.0, 1.0, 1.0), **kwargs).structures
    return coarse, fine


def test_thick_oblique_round_trip(thick: tuple[LabelImage, LabelImage]) -> None:
    coarse, fine = thick
    work, record = to_working_grid(coarse)
    assert work.spacing == pytest.approx((1.0, 1.0, 1.0)) and work.axcodes == "RAS"
    assert np.allclose(work.affine, fine.affine, atol=1e-6)  # working grid = the 1 mm grid, same obliquity
    for method in ("nearest", "label-aware"):
        back = to_native_labels(work, record, method=method)
        assert back.shape == coarse.shape and np.array_equal(back.affine, coarse.affine)
        assert _min_dice(back, coarse) >= 0.999  # measured 1.0 for both


def test_label_aware_gives_the_majority_of_thick_voxels(thick: tuple[LabelImage, LabelImage]) -> None:
    coarse, fine = thick
    _, record = to_working_grid(coarse)
    values = np.unique(fine.array)
    blocks = fine.array.reshape(120, 140, 24, 5)
    majority = LabelImage(values[np.argmax([(blocks == v).sum(-1) for v in values], axis=0)], coarse.affine)
    nearest = to_native_labels(fine, record, method="nearest")
    aware = to_native_labels(fine, record, method="label-aware")
    assert np.array_equal(nearest.array, coarse.array)  # nearest = the label at the thick voxel's centre
    assert (aware.array == majority.array).mean() > 0.999  # measured 1.0
    assert _min_dice(aware, majority) > 0.99 > _min_dice(nearest, majority)  # measured 1.0 vs 0.883


def test_anisotropic_oblique_both_ways_interpolated() -> None:
    ph = make_phantom(spacing=(0.9, 1.1, 4.0), orientation="PSR", rotation=(8.0, 0.0, 12.0), field_of_view=FOV)
    work, record = to_working_grid(ph.structures)
    assert work.spacing == pytest.approx((1.0, 1.0, 1.0))
    assert _min_dice(to_native_labels(work, record), ph.structures) > 0.95  # measured 0.975
    assert _min_dice(to_native_labels(work, record, method="label-aware"), ph.structures) > 0.94  # 0.959


def test_probabilities_stay_in_unit_range() -> None:
    ph = make_phantom(spacing=(1.0, 1.0, 5.0), rotation=(0.0, 10.0, 0.0), field_of_view=FOV, seed=1)
    prob = Image((ph.tissue.array == 3).astype(np.float32), ph.image.affine)
    work, record = to_working_grid(prob)  # cubic along the 5 mm axis, clipped
    assert float(work.array.min()) >= 0.0 and float(work.array.max()) <= 1.0
    back = to_native(work, record)
    assert back.shape == prob.shape and np.array_equal(back.affine, prob.affine)
    assert float(back.array.min()) >= 0.0 and float(back.array.max()) <= 1.0


def test_cubic_beats_linear_along_thick_axis(monkeypatch: pytest.MonkeyPatch) -> None:
    z = np.arange(200) + 0.5
    truth = np.sin(z / 9.0) + 0.3 * np.cos(z / 4.0)
    thick = truth.reshape(40, 5).mean(axis=1)
    image = Image(np.broadcast_to(thick, (4, 4, 40)).astype(np.float32), np.diag([1.0, 1.0, 5.0, 1.0]))
    errors = {}
    for name, factor in (("cubic", resample.CUBIC_FACTOR), ("linear", 1e9)):
        monkeypatch.setattr(resample, "CUBIC_FACTOR", factor)
        work, _ = to_working_grid(image)
        errors[name] = float(np.sqrt(np.mean((work.array[1, 1, 5:-5] - truth[5:-5]) ** 2)))
    assert errors["cubic"] < 0.8 * errors["linear"]


def test_errors() -> None:
    image = Image(np.zeros((4, 5, 6), np.float32), np.eye(4))
    work, record = to_working_grid(image, spacing=2.0)
    assert work.shape == (2, 3, 3)
    with pytest.raises(GeometryError, match="working grid"):
        to_native(image, record)
    with pytest.raises(InputError, match="positive working spacing"):
        to_working_grid(image, spacing=0.0)
    with pytest.raises(GeometryError, match="grid record"):
        GridRecord.from_dict({"native_shape": [1, 2, 3]})
    with pytest.raises(InputError, match="label-aware"):
        to_native_labels(LabelImage(np.zeros((2, 3, 3), np.int32), work.affine), record, method="mode")  # type: ignore[arg-type]
