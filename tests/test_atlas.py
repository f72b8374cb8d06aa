"""Atlas segmentation: atlas files, sampling, voting, EM, and the method on phantoms and (when present) MICCAI."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from mriquant.core.errors import InputError
from mriquant.core.image import Image
from mriquant.evaluate import dice
from mriquant.models.atlas import Atlas, load_atlas, priors_from_maps
from mriquant.segment.atlas import (
    AtlasOptions,
    AtlasSegmenter,
    SparsePosterior,
    em_labels,
    sample_priors,
    trilinear,
    vote,
)
from mriquant.testing.phantom import PhantomSpec, make_phantom
from mriquant.testing.transforms import WorldIdentity
from mriquant.training.atlas import Member, build_atlas, template_box

STRUCTURES = (4, 43, 10, 49, 11, 50, 12, 51)


def _ramp_atlas() -> Atlas:
    """One label whose prior rises by 10/255 per voxel along x, on a 1 mm grid at the origin."""
    priors = np.zeros((1, 20, 6, 6), np.uint8)
    priors[0] = (10 * np.arange(20, dtype=np.uint8))[:, None, None]
    return Atlas(np.array([17], np.int32), priors, np.eye(4), meta={"name": "ramp", "format": 1})


def test_trilinear_sampling_is_exact_on_a_linear_map() -> None:
    world = np.array([[0.0, 2.5, 7.25, 18.9], [1.0, 2.2, 3.7, 4.0], [1.0, 1.5, 2.0, 4.5]], np.float32)
    priors = sample_priors(_ramp_atlas(), world)
    np.testing.assert_allclose(priors[1], 10 * world[0] / 255, atol=1e-5)
    np.testing.assert_allclose(priors.sum(axis=0), 1.0, atol=1e-6)


def test_points_off_the_atlas_are_background() -> None:
    world = np.array([[-5.0, 30.0], [2.0, 2.0], [2.0, 2.0]], np.float32)
    priors = sample_priors(_ramp_atlas(), world)
    np.testing.assert_allclose(priors[0], 1.0)
    _flat, weight = trilinear((20, 6, 6), np.array([[19.5], [0.0], [0.0]], np.float32))
    assert weight.sum() == pytest.approx(0.5)  # half of the corners lie past the last voxel


def test_vote_counts_and_weights() -> None:
    labels = np.array([[1, 2, 0], [1, 1, 0], [2, 2, 0]], np.uint8)
    np.testing.assert_allclose(vote(labels, 3)[:, 0], [0, 2 / 3, 1 / 3], atol=1e-6)
    weights = np.array([[1.0, 1, 1], [1.0, 1, 1], [4.0, 1, 1]], np.float32)
    np.testing.assert_allclose(vote(labels, 3, weights)[:, 0], [0, 2 / 6, 4 / 6], atol=1e-6)
    np.testing.assert_allclose(vote(labels, 3)[:, 2], [1, 0, 0])


def test_em_corrects_a_prior_that_is_wrong_at_30_percent_of_voxels() -> None:
    rng = np.random.default_rng(0)
    truth = rng.integers(1, 3, 20_000)  # classes 1 and 2 (0 is the background)
    x = np.where(truth == 2, 100.0, 60.0).astype(np.float32) + rng.normal(0, 5, truth.size).astype(np.float32)
    favoured = np.where(rng.random(truth.size) < 0.7, truth, 3 - truth)
    priors = np.zeros((3, truth.size), np.float32)
    priors[favoured, np.arange(truth.size)] = 0.6
    priors[3 - favoured, np.arange(truth.size)] = 0.4
    assert np.mean(np.argmax(priors, axis=0) == truth) < 0.72
    posterior, info = em_labels(x, SparsePosterior.top(priors, 2), 3, iterations=10, prior_weight=1.0)
    assert np.mean(posterior.winner() == truth) > 0.99
    np.testing.assert_allclose(info["means"][1:], [60, 100], atol=1.0)


def test_sparse_top_keeps_the_largest() -> None:
    dense = np.array([[0.1, 0.7], [0.6, 0.2], [0.3, 0.1]], np.float32)
    top = SparsePosterior.top(dense, 2)
    assert sorted(top.index[:, 0].tolist()) == [1, 2] and sorted(top.index[:, 1].tolist()) == [0, 1]
    np.testing.assert_allclose(top.value.sum(axis=0), 1.0)
    assert top.winner().tolist() == [1, 0]


def test_build_save_load_and_leave_one_out(tmp_path: Path) -> None:
    box, _ = template_box()
    shape = tuple(s.stop - s.start for s in box)
    rng = np.random.default_rng(1)
    members = []
    for i in range(3):
        labels = np.zeros(shape, np.int32)
        labels[10 + i : 40, 20:50, 30:60] = 17
        labels[60:90, 20:50, 30:60] = 53
        members.append(Member(f"m{i}", labels, rng.random(shape, dtype=np.float32)))
    atlas = build_atlas(members, name="toy", source="test", licence="CC0", resolution_mm=2)
    assert atlas.labels.tolist() == [17, 53]
    assert atlas.priors.shape[1:] == tuple(n // 2 for n in shape)
    # block (5, 10, 15) at 2 mm covers x 10-11: member 0 has 17 at both, member 1 at x 11 only, member 2 at neither
    assert atlas.priors[0, 5, 10, 15] == round(255 * (1 + 0.5 + 0) / 3)
    path = atlas.save(tmp_path / "toy.npz")
    again = load_atlas(path)
    np.testing.assert_array_equal(again.priors, atlas.priors)
    np.testing.assert_array_equal(again.maps, atlas.maps)  # type: ignore[arg-type]
    assert again.meta["members"] == ["m0", "m1", "m2"] and again.has_library
    loo = again.without(["m0"])
    rebuilt = build_atlas(members[1:], name="toy", source="test", licence="CC0", resolution_mm=2)
    np.testing.assert_array_equal(loo.priors, rebuilt.priors)
    assert loo.meta["members"] == ["m1", "m2"]
    priors_only = load_atlas(atlas.save(tmp_path / "p.npz", library=False))
    assert not priors_only.has_library
    with pytest.raises(InputError, match="library"):
        priors_only.without(["m0"])


def test_load_atlas_refuses_missing_and_foreign_files(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="Expected an atlas file"):
        load_atlas(tmp_path / "none.npz")
    bad = tmp_path / "bad.npz"
    bad.write_bytes(b"not a zip")
    with pytest.raises(InputError, match="Expected an mriquant atlas"):
        load_atlas(bad)
    np.savez(tmp_path / "other.npz", meta=np.frombuffer(b'{"format": 99}', np.uint8))
    with pytest.raises(InputError, match="format"):
        load_atlas(tmp_path / "other.npz")


def _phantom_library(tmp_path: Path) -> Path:
    """A library of four phantom anatomies (seeds 11-14) in world space, 2 mm."""
    phantoms = [make_phantom(PhantomSpec(spacing=(2.0, 2.0, 2.0), seed=s, noise=0.02)) for s in (11, 12, 13, 14)]
    ids = np.array(sorted(set(np.unique(phantoms[0].structures.array)) - {0}), np.int32)
    lookup = np.zeros(ids.max() + 1, np.uint8)
    lookup[ids] = np.arange(1, len(ids) + 1)
    maps = np.stack([lookup[p.structures.array] for p in phantoms])
    intensities = []
    for p in phantoms:
        wm = np.isin(p.structures.array, (2, 41))
        intensities.append(p.image.array / p.image.array[wm].mean())
    affine = phantoms[0].image.affine
    priors, prior_affine = priors_from_maps(maps, len(ids), affine, 1)
    meta = {"name": "phantoms", "members": ["s11", "s12", "s13", "s14"], "resolution_mm": 1, "format": 1}
    atlas = Atlas(ids, priors, prior_affine, maps, np.stack(intensities).astype(np.float16), affine, meta)
    return atlas.save(tmp_path / "phantoms.npz")


@pytest.mark.parametrize("fusion", ["em", "majority", "local"])
def test_segments_an_unseen_phantom_anatomy(fusion: str, tmp_path: Path) -> None:
    path = _phantom_library(tmp_path)
    subject = make_phantom(PhantomSpec(spacing=(2.0, 2.0, 2.0), orientation="LIA", seed=5, noise=0.03))
    seg = AtlasSegmenter(AtlasOptions(atlas=str(path), fusion=fusion), to_mni=WorldIdentity(subject.image))
    result = seg.segment(subject.image, subject.brain_mask).dseg
    assert result is not None and result.same_grid(subject.image)
    scores = [dice(result.array == s, subject.structures.array == s) for s in STRUCTURES]
    assert min(scores) > 0.6 and np.mean(scores) > 0.75, dict(zip(STRUCTURES, np.round(scores, 3), strict=True))


def test_em_beats_majority_when_the_prior_is_blurred(tmp_path: Path) -> None:
    path = _phantom_library(tmp_path)
    subject = make_phantom(PhantomSpec(spacing=(2.0, 2.0, 2.0), seed=6, noise=0.02))
    truth = subject.structures.array

    def mean_dice(fusion: str) -> float:
        seg = AtlasSegmenter(AtlasOptions(atlas=str(path), fusion=fusion), to_mni=WorldIdentity(subject.image))
        out = seg.segment(subject.image, subject.brain_mask).dseg
        assert out is not None
        return float(np.mean([dice(out.array == s, truth == s) for s in STRUCTURES]))

    assert mean_dice("em") > mean_dice("majority")


def test_options_are_checked(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="fusion"):
        AtlasOptions(fusion="vote")  # type: ignore[arg-type]
    with pytest.raises(InputError, match="iterations"):
        AtlasOptions(iterations=0)
    subject = make_phantom(PhantomSpec(spacing=(4.0, 4.0, 4.0), seed=5))
    atlas = build_atlas([Member("a", np.zeros((4, 4, 4), np.int32) + 2, np.ones((4, 4, 4), np.float32))],
                        name="x", source="", licence="", resolution_mm=1)  # fmt: skip
    path = atlas.save(tmp_path / "x.npz", library=False)
    seg = AtlasSegmenter(AtlasOptions(atlas=str(path), fusion="local"), to_mni=WorldIdentity(subject.image))
    with pytest.raises(InputError, match="library"):
        seg.segment(subject.image, subject.brain_mask)


def test_constant_image_is_refused() -> None:
    subject = make_phantom(PhantomSpec(spacing=(4.0, 4.0, 4.0), seed=5))
    flat = Image(np.full(subject.image.shape, 7.0, np.float32), subject.image.affine)
    with pytest.raises(InputError, match="constant"):
        AtlasSegmenter(to_mni=WorldIdentity(flat)).segment(flat, subject.brain_mask)
