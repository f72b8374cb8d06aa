"""Tests of mriquant.preprocess.template and mriquant.preprocess.register.

Registrations run at 3 mm on the MNI template itself moved by a known world transform (a
header change only, so the truth is exact). The whole file takes well under a minute.
"""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Literal

import numpy as np
import pytest

from mriquant.core.ants_bridge import from_ants, to_ants
from mriquant.core.case import Case
from mriquant.core.geometry import reorient
from mriquant.core.image import Image, LabelImage
from mriquant.core.transform import Transform
from mriquant.io.transform_files import read_transform, write_transform
from mriquant.preprocess.register import (
    RegistrationError,
    RegistrationOptions,
    register_step,
    register_to_mni,
    registration_quality,
)
from mriquant.preprocess.template import mni_priors, mni_template, template_brain_mask

FAST = RegistrationOptions(
    resolution_mm=3.0,
    linear_iterations=(100, 50),
    linear_shrink=(2, 1),
    linear_smoothing=(1, 0),
    syn_iterations=(10, 0),  # one 6 mm SyN level: enough to make and test warp fields
)


def rotation(ax: float, ay: float, az: float) -> np.ndarray:
    """Rotation about x, then y, then z (degrees), as a 3x3 matrix."""
    a, b, c = np.deg2rad([ax, ay, az])
    rx = np.array([[1, 0, 0], [0, np.cos(a), -np.sin(a)], [0, np.sin(a), np.cos(a)]])
    ry = np.array([[np.cos(b), 0, np.sin(b)], [0, 1, 0], [-np.sin(b), 0, np.cos(b)]])
    rz = np.array([[np.cos(c), -np.sin(c), 0], [np.sin(c), np.cos(c), 0], [0, 0, 1]])
    return np.asarray(rz @ ry @ rx, dtype=np.float64)


def world(linear: np.ndarray, shift: tuple[float, float, float]) -> np.ndarray:
    out = np.eye(4)
    out[:3, :3] = linear
    out[:3, 3] = shift
    return out


def moved(image: Image, truth: np.ndarray) -> Image:
    """``image`` with its world moved by ``truth`` (subject mm = truth @ template mm); no resampling."""
    return type(image)(image.array.copy(), truth @ image.affine, dict(image.meta))


def dice(a: np.ndarray, b: np.ndarray) -> float:
    return float(2 * np.logical_and(a, b).sum() / (a.sum() + b.sum()))


RIGID_TRUTH = world(rotation(8.0, -5.0, 6.0), (6.0, -4.0, 9.0))
AFFINE_TRUTH = world(rotation(-6.0, 4.0, 10.0) @ np.diag([1.08, 0.94, 1.03]), (-5.0, 7.0, -3.0))


@pytest.fixture(scope="module")
def template2() -> Image:
    return mni_template(resolution_mm=2.0, brain=True)


@pytest.fixture(scope="module")
def rigid_subject(template2: Image) -> Image:
    return moved(template2, RIGID_TRUTH)


@pytest.fixture(scope="module")
def lia_subject(template2: Image) -> Image:
    """The 2 mm template reoriented to LIA, then moved by an affine (an oblique LIA grid)."""
    subject = moved(reorient(template2, "LIA"), AFFINE_TRUTH)
    assert subject.axcodes == "LIA"
    return subject


@pytest.fixture(scope="module")
def template3() -> Image:
    return mni_template(resolution_mm=3.0, brain=True)


@pytest.fixture(scope="module")
def rigid_tx(rigid_subject: Image) -> Transform:
    return register_to_mni(rigid_subject, kind="rigid", options=FAST)  # default template: 1 mm MNI grid


@pytest.fixture(scope="module")
def affine_tx(lia_subject: Image, template3: Image) -> Transform:
    return register_to_mni(lia_subject, kind="affine", template=template3, options=FAST)


@pytest.fixture(scope="module")
def syn_tx(rigid_subject: Image, template3: Image) -> Transform:
    return register_to_mni(rigid_subject, kind="syn", template=template3, options=FAST)


def angle_deg(a: np.ndarray, b: np.ndarray) -> float:
    """Angle of the rotation taking ``b``'s rotation part to ``a``'s (polar parts, scale removed)."""

    def polar(m: np.ndarray) -> np.ndarray:
        u, _, vt = np.linalg.svd(m)
        return np.asarray(u @ vt, dtype=np.float64)

    r = polar(a[:3, :3]) @ polar(b[:3, :3]).T
    return float(np.degrees(np.arccos(np.clip((np.trace(r) - 1) / 2, -1, 1))))


# ------------------------------------------------------------------------------------------------------------- template


def test_template_grids_and_copies() -> None:
    t1 = mni_template()
    assert t1.shape == (197, 233, 189) and t1.spacing == (1.0, 1.0, 1.0)
    t2 = mni_template(resolution_mm=2.0)
    assert t2.shape == (99, 117, 95) and t2.spacing == (2.0, 2.0, 2.0)
    assert np.allclose(t2.affine[:3, 3], [-97.5, -133.5, -71.5])
    t2.array[:] = 5.0  # callers get a copy: the cache is untouched
    assert mni_template(resolution_mm=2.0).array.max() <= 1.0
    brain = mni_template(resolution_mm=2.0, brain=True)
    mask = template_brain_mask(resolution_mm=2.0)
    assert np.all(brain.array[mask.array == 0] == 0)
    assert 1.7e6 < mask.array.sum() * 8 < 2.0e6  # mm^3: the 2009a brain incl. CSF is ~1.87 L


def test_template_bad_resolution() -> None:
    with pytest.raises(Exception, match="Expected a template resolution"):
        mni_template(resolution_mm=0.5)


def test_priors() -> None:
    priors = mni_priors(resolution_mm=3.0)
    assert sorted(priors) == ["csf", "gm", "wm"]
    total = priors["csf"].array + priors["gm"].array + priors["wm"].array
    inside = template_brain_mask(resolution_mm=3.0).array != 0
    for prior in priors.values():
        assert prior.array.dtype == np.float32
        assert prior.array.min() >= 0.0 and prior.array.max() <= 1.0
        assert np.all(prior.array[~inside] == 0)
    assert np.all(total[inside] >= 1.0 - 1e-5)  # csf fills the brain up to 1


# ---------------------------------------------------------------------------------------------------------- converters


def test_ants_round_trip_oblique_flipped() -> None:
    rng = np.random.default_rng(0)
    affine = world(np.diag([-0.9, 1.1, -2.0])[:, [2, 0, 1]] @ rotation(5, 10, -15).T, (12.0, -30.0, 7.5))
    image = Image(rng.random((5, 6, 7), dtype=np.float32), affine)
    back = from_ants(to_ants(image), image)
    assert np.array_equal(back.array, image.array)
    assert np.allclose(back.affine, image.affine, atol=1e-6)
    point = np.array([1, 2, 3])
    ras = image.affine[:3, :3] @ point + image.affine[:3, 3]
    lps = np.asarray(to_ants(image).origin) + np.asarray(to_ants(image).direction) @ (
        np.asarray(to_ants(image).spacing) * point
    )
    assert np.allclose(lps, ras * [-1, -1, 1], atol=1e-5)


# -------------------------------------------------------------------------------------------------------- registration


def test_rigid_recovered(rigid_tx: Transform) -> None:
    estimate = rigid_tx.affine_ras()  # subject mm -> template mm
    truth = np.linalg.inv(RIGID_TRUTH)
    assert angle_deg(estimate, truth) < 1.0
    assert np.linalg.norm(estimate[:3, 3] - truth[:3, 3]) < 1.0
    assert np.allclose(np.linalg.svd(estimate[:3, :3], compute_uv=False), 1.0, atol=1e-4)
    assert rigid_tx.meta["quality"]["ncc"] > 0.9
    assert rigid_tx.template.shape == (197, 233, 189)  # default template grid: 1 mm MNI


def test_affine_recovered(affine_tx: Transform) -> None:
    estimate = affine_tx.affine_ras()
    truth = np.linalg.inv(AFFINE_TRUTH)
    assert angle_deg(estimate, truth) < 1.0
    assert np.abs(estimate[:3, :3] - truth[:3, :3]).max() < 0.02
    brain_centre = np.array([0.0, -18.0, 18.0, 1.0])  # mm, in the subject's world: compare where it lands
    assert np.linalg.norm((estimate - truth) @ (AFFINE_TRUTH @ brain_centre)) < 1.0


def test_inverted_contrast_registers_like_t1(lia_subject: Image, template3: Image) -> None:
    """A T2/PD-like contrast (dark white matter) gives a negative correlation, not a failure."""
    inside = lia_subject.array > 0.05
    inverted = lia_subject.with_array(np.where(inside, lia_subject.array.max() - lia_subject.array, 0.0))
    tx = register_to_mni(inverted, kind="affine", template=template3, options=FAST)
    assert tx.meta["quality"]["ncc"] < -0.4
    estimate, truth = tx.affine_ras(), np.linalg.inv(AFFINE_TRUTH)
    assert angle_deg(estimate, truth) < 1.5 and np.abs(estimate[:3, :3] - truth[:3, :3]).max() < 0.03


def test_to_subject_is_native_grid(affine_tx: Transform, lia_subject: Image, template2: Image) -> None:
    back = affine_tx.apply(template2, direction="to_subject")
    assert back.shape == lia_subject.shape
    assert np.array_equal(back.affine, lia_subject.affine)
    inside = lia_subject.array > 0.1
    assert np.corrcoef(back.array[inside], lia_subject.array[inside])[0, 1] > 0.95
    assert affine_tx.apply(lia_subject).same_grid(mni_template(resolution_mm=3.0))  # the template passed


def test_label_round_trip(affine_tx: Transform, lia_subject: Image) -> None:
    centre = np.argwhere(lia_subject.array > 0.1).mean(axis=0)
    ijk = np.indices(lia_subject.shape)
    halves = np.where(ijk[0] < centre[0], 1, 2) * (lia_subject.array > 0.1)
    labels = LabelImage(halves.astype(np.int32), lia_subject.affine)
    methods: tuple[Literal["nearest", "label"], ...] = ("nearest", "label")
    for method in methods:
        there = affine_tx.apply(labels, interpolation=method)
        assert isinstance(there, LabelImage) and there.labels == [1, 2]
        back = affine_tx.apply(there, direction="to_subject", interpolation=method)
        assert back.same_grid(labels) and back.array.dtype == np.int32
        for value in (1, 2):
            assert dice(back.array == value, labels.array == value) > 0.93


def test_labels_refuse_linear(affine_tx: Transform) -> None:
    labels = LabelImage(np.ones((4, 4, 4), np.int32), np.eye(4))
    with pytest.raises(Exception, match="'nearest' or 'label'"):
        affine_tx.apply(labels, interpolation="linear")


def test_syn_save_load_round_trip(syn_tx: Transform, rigid_subject: Image, tmp_path: Path) -> None:
    written = write_transform(syn_tx, tmp_path)
    names = sorted(p.name for p in written)
    assert names == ["to_mni.json", "to_mni.mat", "to_mni_invwarp.nii.gz", "to_mni_warp.nii.gz"]
    loaded = read_transform(tmp_path)
    assert loaded.kind == "syn" and loaded.subject.shape == rigid_subject.shape
    for direction, image in (("to_template", rigid_subject), ("to_subject", mni_template(resolution_mm=2.0))):
        a = syn_tx.apply(image, direction=direction)  # type: ignore[arg-type]
        b = loaded.apply(image, direction=direction)  # type: ignore[arg-type]
        assert np.array_equal(a.array, b.array) and np.array_equal(a.affine, b.affine)
    assert np.allclose(loaded.affine_ras(), syn_tx.affine_ras())


def test_syn_quality(syn_tx: Transform, template3: Image, rigid_subject: Image) -> None:
    assert [f.role for f in syn_tx.forward] == ["warp", "affine"]
    assert [(f.role, f.invert) for f in syn_tx.inverse] == [("affine", True), ("invwarp", False)]
    assert syn_tx.meta["quality"]["ncc"] > 0.95
    quality = registration_quality(syn_tx.apply(rigid_subject), template3)
    assert quality["ncc"] > 0.95 and 1.0 < quality["nmi"] <= 2.0


def test_compose_subject_to_subject(rigid_tx: Transform, affine_tx: Transform, rigid_subject: Image) -> None:
    composed = rigid_tx.compose(affine_tx)  # rigid subject -> MNI -> LIA subject
    truth = AFFINE_TRUTH @ np.linalg.inv(RIGID_TRUTH)
    estimate = composed.affine_ras()
    assert angle_deg(estimate, truth) < 1.5
    assert np.abs(estimate[:3, :3] - truth[:3, :3]).max() < 0.03
    there = composed.apply(rigid_subject)
    assert there.same_grid(Image(np.zeros(affine_tx.subject.shape), affine_tx.subject.affine))


def test_noise_raises_one_line() -> None:
    rng = np.random.default_rng(1)
    noise = Image(rng.random((60, 70, 60), dtype=np.float32), np.diag([3.0, 3.0, 3.0, 1.0]))
    with pytest.raises(RegistrationError) as info:
        register_to_mni(noise, kind="affine", options=dataclasses.replace(FAST, init="com"))  # skip the 7-start search
    message = str(info.value)
    assert "\n" not in message and message.startswith("Expected") and "found" in message


def test_register_step_records(lia_subject: Image) -> None:
    mask = LabelImage((lia_subject.array > 0.05).astype(np.int32), lia_subject.affine)
    case = Case(lia_subject, labels={"brain_mask": mask})
    out = register_step(case, options=FAST)
    assert "to_mni" in out.transforms and "to_mni" not in case.transforms
    step = out.provenance[-1]
    assert step.name == "register" and step.params["kind"] == "affine" and step.params["masked"] is True
    assert step.params["quality"]["ncc"] > 0.8 and len(step.params["affine_ras"]) == 4


def test_bad_kind() -> None:
    with pytest.raises(Exception, match="Expected kind"):
        register_to_mni(mni_template(resolution_mm=3.0), kind="bspline")  # type: ignore[arg-type]


REPEAT_SCRIPT = textwrap.dedent(
    """
    import numpy as np
    from mriquant.core.ants_bridge import itk_threads
    from mriquant.preprocess.register import RegistrationOptions, register_to_mni
    from mriquant.preprocess.template import mni_template
    opts = RegistrationOptions(resolution_mm=3.0, linear_iterations=(100, 50), linear_shrink=(2, 1),
                               linear_smoothing=(1, 0))
    t = mni_template(resolution_mm=2.0)
    t.affine[:3, 3] += (4.0, -3.0, 2.0)
    runs = [register_to_mni(t, kind="affine", options=opts).affine_ras() for _ in range(3)]
    print(all(np.array_equal(runs[0], r) for r in runs[1:]), itk_threads())
    """
)


def _without_itk_threads() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if k != "ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS"}


def test_deterministic_by_default() -> None:
    """Same scan, same seed -> identical transforms without any setting by the user (ITK pinned to one thread)."""
    result = subprocess.run([sys.executable, "-c", REPEAT_SCRIPT], env=_without_itk_threads(), capture_output=True,
                            text=True, timeout=300)  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "True {'itk_threads': '1', 'reproducible': True}"


def test_user_thread_count_is_kept_and_recorded() -> None:
    env = {**_without_itk_threads(), "ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS": "2"}
    script = REPEAT_SCRIPT.replace("range(3)", "range(1)")
    result = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().endswith("{'itk_threads': '2', 'reproducible': False}")
