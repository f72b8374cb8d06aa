"""The dual-task network: label space, sampler, loss, flip augmentation, training command, inference."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F  # noqa: N812

from mriquant.cli import main
from mriquant.core.errors import InputError
from mriquant.core.image import Image, LabelImage
from mriquant.models.deep_data import (
    BOX,
    IGNORE,
    LR_PAIRS,
    STRUCTURES,
    TISSUE_OF,
    class_index,
    flip_permutation,
    tissue_lut,
)
from mriquant.models.deep_net import (
    IMAGE_CHANNELS,
    N_STRUCTURES,
    N_TISSUES,
    box_log_prior,
    build_network,
    default_config,
    predict_box,
)
from mriquant.models.inputs import normalise_box
from mriquant.models.unet import UNetConfig
from mriquant.training.deep import _dice_loss, dice_scores
from mriquant.training.deep_augment import AugmentConfig, DeepSampler
from mriquant.training.deep_cases import TrainingCase, load_case

#: Tissue Dice floors of the regression test: measured 0.730 (GM) and 0.792 (WM) with the shipped weights
#: (version 2, 2026-12-05) on the 2 mm simulated head, network alone, minus 0.03.
GM_FLOOR = 0.70
WM_FLOOR = 0.76
#: With the default EM refinement (measured 0.972 / 0.961 with the same weights), minus 0.03.
EM_GM_FLOOR = 0.94
EM_WM_FLOOR = 0.93


def test_label_space_is_consistent() -> None:
    assert STRUCTURES[0] == 0 and len(set(STRUCTURES)) == len(STRUCTURES) == 33
    assert set(TISSUE_OF) == set(STRUCTURES) - {0}
    ids = np.array([0, 2, 17, 53, 24, 30, 999])
    index = class_index(ids)
    assert list(np.asarray(STRUCTURES)[index[:5]]) == [0, 2, 17, 53, 24]
    assert index[5] == IGNORE and index[6] == IGNORE  # vessel and an unknown id: out of the loss
    lut = tissue_lut()
    assert lut[STRUCTURES.index(4)] == 1 and lut[STRUCTURES.index(3)] == 2 and lut[STRUCTURES.index(16)] == 3
    assert lut[IGNORE] == IGNORE and lut[0] == 0


def test_flip_permutation_swaps_left_and_right() -> None:
    perm = flip_permutation()
    np.testing.assert_array_equal(perm[perm], np.arange(len(STRUCTURES)))
    for left, right in LR_PAIRS:
        assert STRUCTURES[perm[STRUCTURES.index(left)]] == right
    for midline in (0, 14, 15, 16, 24):
        assert perm[STRUCTURES.index(midline)] == STRUCTURES.index(midline)


def test_box_is_symmetric_about_the_midsagittal_plane() -> None:
    x = BOX.coordinates()[0, :, 0, 0] * 100.0
    np.testing.assert_allclose(x, -x[::-1], atol=1e-4)
    assert all(n % default_config().multiple == 0 for n in BOX.shape)


def test_box_prior_is_a_distribution_per_head_with_left_on_the_left() -> None:
    prior = np.exp(box_log_prior())
    assert prior.shape == (N_STRUCTURES + N_TISSUES, *BOX.shape)
    np.testing.assert_allclose(prior[:N_STRUCTURES].sum(0), 1.0, atol=1e-4)
    np.testing.assert_allclose(prior[N_STRUCTURES:].sum(0), 1.0, atol=1e-4)
    x = BOX.coordinates()[0] * 100.0
    for left, right in ((17, 53), (10, 49), (4, 43)):  # hippocampus, thalamus, lateral ventricle
        likely_left, likely_right = prior[STRUCTURES.index(left)] > 0.3, prior[STRUCTURES.index(right)] > 0.3
        assert float(x[likely_left].mean()) < -5.0 and float(x[likely_right].mean()) > 5.0
        assert np.mean(x[likely_left] < 0) > 0.99 and np.mean(x[likely_right] > 0) > 0.99
    centre = tuple(n // 2 for n in BOX.shape)  # near the MNI origin: brain, not background
    assert prior[0][centre] < 0.1 and prior[N_STRUCTURES][centre] < 0.1


def test_untrained_output_convolution_gives_back_the_prior() -> None:
    net = build_network(UNetConfig(in_channels=4, channels=(4, 8), out_channels=N_STRUCTURES + N_TISSUES))
    with torch.no_grad():
        net.unet.head.weight.zero_()
        net.unet.head.bias.zero_()
    prior = torch.from_numpy(box_log_prior()[:, 40:48, 60:66, 50:54].copy())
    x = torch.cat([torch.randn(IMAGE_CHANNELS, 8, 6, 4), prior])
    probs = predict_box(net, x)
    torch.testing.assert_close(probs[:N_STRUCTURES], torch.softmax(prior[:N_STRUCTURES], 0))
    torch.testing.assert_close(probs[N_STRUCTURES:], torch.softmax(prior[N_STRUCTURES:], 0))
    with pytest.raises(ValueError, match="prior channels"):
        net(x[None, :IMAGE_CHANNELS])


def _reference_dice_loss(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    n = logits.shape[1]
    probs = torch.softmax(logits, 1)
    valid = (target != IGNORE).unsqueeze(1)
    onehot = F.one_hot(target.clamp(max=n - 1), n).movedim(-1, 1).float()
    probs, onehot = probs * valid, onehot * valid
    dims = (0, 2, 3, 4)
    present = onehot.sum(dims) > 0
    dice = (2 * (probs * onehot).sum(dims) + 1e-5) / ((probs + onehot).sum(dims) + 1e-5)
    return 1 - dice[present].mean()


def test_dice_loss_matches_the_one_hot_definition_and_ignores_voxels() -> None:
    gen = torch.Generator().manual_seed(0)
    logits = torch.randn(1, 5, 6, 7, 8, generator=gen)
    target = torch.randint(0, 4, (1, 6, 7, 8), generator=gen)  # class 4 absent: not averaged
    target[0, 0] = IGNORE
    assert float(_dice_loss(logits, target)) == pytest.approx(float(_reference_dice_loss(logits, target)), abs=1e-6)
    perfect = 50.0 * F.one_hot(target.clamp(max=4), 5).movedim(-1, 1).float()
    assert float(_dice_loss(perfect, target)) < 1e-4


def test_dice_scores() -> None:
    a = np.array([0, 1, 1, 2, 2])
    b = np.array([0, 1, 2, 2, 2])
    scores = dice_scores(a, b, (1, 2, 3))
    assert scores[1] == pytest.approx(2 / 3) and scores[2] == pytest.approx(0.8) and np.isnan(scores[3])


def test_flip_augmentation_is_exactly_equivariant() -> None:
    torch.manual_seed(0)
    net = build_network(UNetConfig(in_channels=4, channels=(4, 8), out_channels=N_STRUCTURES + N_TISSUES))
    x = torch.randn(IMAGE_CHANNELS + N_STRUCTURES + N_TISSUES, 8, 6, 4)
    mirrored = torch.cat([x[:1].flip(1), x[1:]])
    perm = torch.from_numpy(np.concatenate([flip_permutation(), N_STRUCTURES + np.arange(N_TISSUES)]))
    a = predict_box(net, x, flip=True)
    b = predict_box(net, mirrored, flip=True)
    torch.testing.assert_close(b, a.flip(1)[perm], atol=1e-5, rtol=1e-4)
    np.testing.assert_allclose(a[:N_STRUCTURES].sum(0).numpy(), 1.0, atol=1e-5)
    np.testing.assert_allclose(a[N_STRUCTURES:].sum(0).numpy(), 1.0, atol=1e-5)


def _sphere_case(image: bool) -> TrainingCase:
    """A labelled ball (cerebral WM 2 inside cortex 3 inside CSF 24) of 26 mm radius at the MNI origin, 2 mm."""
    n = 80
    ijk = np.indices((n, n, n)).astype(np.float32) - (n - 1) / 2
    r = np.sqrt((ijk**2).sum(0)) * 2.0
    ids = np.select([r < 16, r < 22, r < 26], [2, 3, 24], 0)
    affine = np.diag([2.0, 2.0, 2.0, 1.0])
    affine[:3, 3] = -(n - 1)  # centre at world 0
    values = None
    if image:
        values = np.select([ids == 2, ids == 3, ids == 24], [1.0, 0.6, 0.2], 0.0).astype(np.float16)
    return TrainingCase("ball", class_index(ids), values, np.linalg.inv(affine))


@pytest.mark.parametrize("real", [True, False])
def test_sampler_targets_follow_the_labels(real: bool) -> None:
    config = AugmentConfig(crop=(32, 40, 32), real_fraction=1.0 if real else 0.0, centre_fraction=1.0)
    sampler = DeepSampler([_sphere_case(image=True)], config=config, seed=3)
    x, structures, tissues = sampler.sample()
    assert x.shape == (IMAGE_CHANNELS + N_STRUCTURES + N_TISSUES, 32, 40, 32)
    assert structures.shape == tissues.shape == (32, 40, 32)
    lut = torch.from_numpy(tissue_lut().astype(np.int64))
    torch.testing.assert_close(tissues, lut[structures])
    allowed = {0, STRUCTURES.index(2), STRUCTURES.index(3), STRUCTURES.index(24)}
    assert set(np.unique(structures.numpy())) <= allowed | {IGNORE}
    assert torch.any(structures == 0)
    assert torch.all(x[0][structures == 0] == 0)  # outside the brain: exactly 0
    wm, csf = x[0][structures == STRUCTURES.index(2)], x[0][structures == STRUCTURES.index(24)]
    if real:  # the real image's contrast survives the augmentation: WM brighter than CSF
        assert float(wm.mean()) > float(csf.mean())
    else:  # a synthetic image is the labels' brain and nothing else
        assert not torch.any(structures == IGNORE)
    again = DeepSampler([_sphere_case(image=True)], config=config, seed=3).sample()
    torch.testing.assert_close(again[0], x)


def test_sampler_keeps_the_unlabelled_brain_of_a_real_scan_out_of_the_loss() -> None:
    """MICCAI 2012 labels leave sulcal CSF out: in the scan's brain, those voxels are IGNORE, not background."""
    case = _sphere_case(image=True)
    unlabelled_csf = np.where(case.labels == STRUCTURES.index(24), 0, case.labels).astype(case.labels.dtype)
    case = TrainingCase(case.name, unlabelled_csf, case.image, case.template_to_voxel)
    config = AugmentConfig(crop=(32, 40, 32), real_fraction=1.0, centre_fraction=1.0)
    x, structures, tissues = DeepSampler([case], config=config, seed=3).sample()
    rim = structures == IGNORE
    assert int(rim.sum()) > 1000  # the 22-26 mm shell of the ball inside the crop
    assert torch.all(tissues[rim] == IGNORE)
    assert torch.all(x[0][rim] != 0)  # it is in the (normalised) brain image
    assert float(x[0][rim].mean()) < float(x[0][structures == STRUCTURES.index(2)].mean())
    assert torch.all(x[0][structures == 0] == 0)


def test_normalise_box_maps_percentiles_and_zeroes_the_outside() -> None:
    image = torch.linspace(0, 100, 1000).reshape(10, 10, 10)
    brain = torch.zeros(10, 10, 10, dtype=torch.bool)
    brain[2:8] = True
    out = normalise_box(image, brain)
    assert torch.all(out[~brain] == 0)
    inside = out[brain]
    assert float(torch.quantile(inside, 0.01)) == pytest.approx(0.0, abs=1e-3)
    assert float(torch.quantile(inside, 0.99)) == pytest.approx(1.0, abs=1e-3)


def _write_pairs(folder: Path) -> None:
    """Two small training pairs (2 mm simulated BrainWeb heads, tissue labels as FreeSurfer ids)."""
    from mriquant.io import write_image
    from mriquant.preprocess.skullstrip_atlas import load_head_atlases

    heads = load_head_atlases()
    folder.mkdir()
    for k in range(2):
        head, fraction = heads.atlas(k)
        tissue = heads.class_fractions(k)[:4].argmax(0)  # 0 background, 1 CSF, 2 GM, 3 WM
        brain = fraction.array > 0
        ids = np.where(brain, np.array([0, 24, 3, 2])[tissue], 0).astype(np.int16)
        write_image(head.with_array(head.array * brain), folder / f"s{k}_SS.nii.gz")
        write_image(LabelImage(ids, head.affine.copy()), folder / f"s{k}_glm.nii.gz")


@pytest.mark.slow
def test_train_checkpoints_resumes_and_exports(tmp_path: Path) -> None:
    pairs, run, export = tmp_path / "pairs", tmp_path / "run", tmp_path / "export"
    _write_pairs(pairs)
    config = tmp_path / "train.json"
    config.write_text(json.dumps({"validate_every": 2, "threads": 1, "validation": "s1"}))
    args = [str(pairs), "-o", str(run), "--config", str(config), "--max-steps", "2", "--minutes", "0"]
    assert main(["train", *args]) == 0
    for name in ("config.json", "checkpoint.pt", "best.pt", "log.jsonl", "cases/s0.npz"):
        assert (run / name).is_file(), name
    saved = json.loads((run / "config.json").read_text())
    assert saved["training_cases"] == ["s0"] and saved["validation_cases"] == ["s1"]
    log = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
    assert log[-1]["step"] == 2 and 0.0 <= log[-1]["gm"] <= 1.0
    assert load_case(run / "cases" / "s0.npz").image is not None
    assert main(["train", *args[:-2], "--max-steps", "3", "--minutes", "0", "--resume", "--export", str(export)]) == 0
    log = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
    assert log[-1]["step"] == 3
    manifest = json.loads((export / "manifest.json").read_text())["models"]["deep"]
    from mriquant.models import file_sha256

    assert manifest["sha256"] == file_sha256(export / "deep_unet.pt")
    assert manifest["training_data"] == ["s0"] and manifest["config"]["out_channels"] == N_STRUCTURES + N_TISSUES


@pytest.mark.slow
def test_train_starts_from_given_weights(tmp_path: Path) -> None:
    from mriquant.segment.deep import load_network

    pairs, first, second = tmp_path / "pairs", tmp_path / "first", tmp_path / "second"
    _write_pairs(pairs)
    common = ["--threads", "1", "--max-steps", "1", "--minutes", "0", "--validation", "s1"]
    assert main(["train", str(pairs), "-o", str(first), *common]) == 0
    assert main(["train", str(pairs), "-o", str(second), *common, "--max-steps", "0", "--minutes", "1e-9",
                 "--init", str(first)]) == 0  # fmt: skip
    a, _ = load_network(str(first))
    b, _ = load_network(str(second))  # no step taken: the initial weights come back
    for key, value in a.state_dict().items():
        torch.testing.assert_close(b.state_dict()[key], value)
    assert json.loads((second / "config.json").read_text())["init"] == str(first)


def test_train_rejects_a_bad_config(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = tmp_path / "train.json"
    config.write_text(json.dumps({"epochs": 3}))
    assert main(["train", str(tmp_path), "-o", str(tmp_path / "o"), "--config", str(config)]) == 2
    assert "Expected config keys" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


def _simulated_head(k: int) -> tuple[Image, LabelImage, np.ndarray]:
    """A shipped 2 mm simulated BrainWeb head (T1), its brain mask and true tissues (0 bg, 1 CSF, 2 GM, 3 WM)."""
    from mriquant.preprocess.skullstrip_atlas import load_head_atlases

    heads = load_head_atlases()
    head, fraction = heads.atlas(k)
    mask = LabelImage((fraction.array > 0.5).astype(np.uint8), head.affine.copy())
    truth = np.where(mask.array > 0, heads.class_fractions(k)[1:4].argmax(0) + 1, 0)
    return head.with_array(head.array * mask.array), mask, truth


@pytest.mark.slow
@pytest.mark.parametrize(("refine", "floors"), [("none", (GM_FLOOR, WM_FLOOR)), ("em", (EM_GM_FLOOR, EM_WM_FLOOR))])
def test_bundled_network_segments_a_simulated_head(refine: str, floors: tuple[float, float]) -> None:
    """Regression: the shipped weights on a 2 mm simulated head (real affine registration, flip averaging).

    ``none`` checks the network alone, ``em`` the default (network posteriors as priors of an intensity EM).
    """
    from mriquant.evaluate import dice
    from mriquant.segment.deep import DeepOptions, DeepSegmenter

    image, mask, truth = _simulated_head(0)
    seg = DeepSegmenter(DeepOptions(refine=refine)).segment(image, mask)
    assert seg.tissue is not None and seg.dseg is not None
    gm = dice(seg.tissue.array == 2, truth == 2)
    wm = dice(seg.tissue.array == 3, truth == 3)
    assert gm > floors[0] and wm > floors[1], (gm, wm)
    world_x = {}
    for label in (10, 49, 4, 43, 17, 53):  # thalamus, lateral ventricle, hippocampus: left < 0 < right in RAS
        ijk = np.argwhere(seg.dseg.array == label).mean(axis=0)
        world_x[label] = float(seg.dseg.affine[0, :3] @ ijk + seg.dseg.affine[0, 3])
    assert world_x[10] < 0 < world_x[49] and world_x[4] < 0 < world_x[43] and world_x[17] < 0 < world_x[53], world_x
    assert seg.info["weights"]["sha256"] and seg.info["voxels_outside_box"] < 0.001 * int(mask.array.sum())
    assert seg.info["refine"] == refine
    if refine == "em":  # the HMRF-EM's maps come along, and the probabilities still sum to 1 in the brain
        assert {"pve_GM", "bias_field"} <= set(seg.extras)
        total = sum(p.array for p in seg.probabilities.values())
        np.testing.assert_allclose(total[mask.array > 0], 1.0, atol=1e-4)


@pytest.mark.slow
def test_tissues_only_gives_the_same_tissues_without_structures() -> None:
    from mriquant.evaluate import dice
    from mriquant.segment.deep import DeepOptions, DeepSegmenter

    image, mask, _ = _simulated_head(1)
    both = DeepSegmenter().segment(image, mask)
    tissues = DeepSegmenter(DeepOptions(structures=False)).segment(image, mask)
    assert both.dseg is not None and tissues.dseg is None and "confidence" not in tissues.info
    assert both.tissue is not None and tissues.tissue is not None
    for label in (1, 2, 3):  # same tissue path; ANTs' two-thread affine alone moves ~0.2 % of the voxels between runs
        assert dice(tissues.tissue.array == label, both.tissue.array == label) > 0.99


def test_weights_trained_with_another_prior_are_refused(tmp_path: Path) -> None:
    import shutil

    from mriquant.core.errors import InputError
    from mriquant.models import WEIGHTS_DIR
    from mriquant.segment.deep import load_network

    for item in WEIGHTS_DIR.iterdir():
        if item.is_file():
            shutil.copy(item, tmp_path / item.name)
    manifest = json.loads((tmp_path / "manifest.json").read_text())
    load_network(str(tmp_path))  # an unchanged copy loads
    manifest["models"]["deep"]["prior"]["sigma_mm"] = 4.0
    (tmp_path / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(InputError, match="sigma_mm"):
        load_network(str(tmp_path))


def test_structure_refinement_lets_intensities_decide_where_the_network_hesitates() -> None:
    """Two structures the network cannot tell apart (50/50) but whose intensities differ: the EM separates them."""
    from mriquant.segment.deep import refine_structures

    rng = np.random.default_rng(0)
    n = 4000
    x = np.concatenate([rng.normal(1.0, 0.05, n), rng.normal(2.0, 0.05, n)]).astype(np.float32)
    probs = np.full((5, 2 * n), 0.01, np.float32)
    probs[1, :n], probs[2, :n] = 0.9, 0.07  # confident where the classes are learnt ...
    probs[2, n:], probs[1, n:] = 0.9, 0.07
    probs[1:3, n // 2 : n + n // 2] = 0.48  # ... and 50/50 in the middle half
    probs /= probs.sum(0, keepdims=True)
    winner, confidence = refine_structures(x, probs, prior_weight=1.5)
    assert np.all(winner[:n] == 1) and np.all(winner[n:] == 2)
    assert float(confidence.min()) > 0.9
    truth = np.repeat([1, 2], n)
    assert int((probs.argmax(0) != truth).sum()) == n // 2  # the network's own arg-max breaks the tie one way
    assert winner.shape == (2 * n,) and confidence.dtype == np.float32


def test_deep_options_reject_an_unknown_refinement() -> None:
    from mriquant.segment.deep import DeepOptions

    with pytest.raises(InputError, match="refine"):
        DeepOptions(refine="crf")
    with pytest.raises(InputError, match="prior weights"):
        DeepOptions(prior_weight=-1.0)


def test_tissue_prior_mixes_the_atlas_in_and_stays_a_distribution() -> None:
    from mriquant.segment.deep import _mix

    net = np.array([[0.0, 0.2], [1.0, 0.3], [0.0, 0.5]], np.float32)  # sulcal CSF read as GM by the network
    atlas = np.array([[0.8, 0.0], [0.2, 0.0], [0.0, 0.0]], np.float32)  # the second voxel is beyond the atlas
    mixed = _mix(net, atlas, 0.5)
    np.testing.assert_allclose(mixed.sum(axis=0), 1.0, atol=1e-6)
    np.testing.assert_allclose(mixed[:, 0], [0.4, 0.6, 0.0], atol=1e-6)
    np.testing.assert_allclose(mixed[:, 1], 0.5 * net[:, 1] + 0.5 / 3.0, atol=1e-6)  # no atlas: uniform share
    assert _mix(net, atlas, 0.0) is net
