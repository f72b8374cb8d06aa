"""Deep-learning segmentation of tissues and structures in one pass (``--method deep``).

The brain is affinely registered to MNI152 (or the pipeline's transform is reused: only its linear part is
used), resampled once onto the network's 1.5 mm working box (:data:`~mriquant.models.deep_data.BOX`),
normalised, and passed through the dual-task U-Net (:mod:`mriquant.models.deep_net`) with an optional
left-right flip test-time augmentation. The class probabilities are then read back at every native voxel of
the brain mask by trilinear interpolation through the same affine, so the arg-max is taken on the native
grid (sub-voxel boundaries rather than 1.5 mm blocks).

By default (``refine="em"``) the network's posteriors are then the spatial priors of a Bayesian intensity
model fitted to this scan, as atlas-based methods use a registered atlas (Van Leemput et al. 1999; SAMSEG,
Puonti et al. 2016), but with a subject-specific prior:

- tissues: the HMRF-EM of ``mrf`` (:func:`~mriquant.segment.mrf.hmrf_em`: Gaussian classes, Potts prior, bias
  field, partial volumes) with the tissue head's CSF/GM/WM probabilities mixed with the atlas's tissue
  prior (``atlas_tissue_share``, half by default: the network learnt tissues from MICCAI 2012 labels, which
  leave sulcal CSF out, and alone let the EM merge a bright T2 sulcal CSF into GM), floored at
  :data:`TISSUE_PRIOR_FLOOR`, to the power ``tissue_prior_weight``;
- structures: one Gaussian per structure, EM over each voxel's :data:`TOP_CLASSES` likeliest structures
  (:func:`~mriquant.segment.atlas.em_labels`), the structure head's probabilities to the power
  ``prior_weight``, then the arg-max of the posteriors smoothed by ``smooth_mm`` (as ``atlas`` does).

Why: the network was trained for a few CPU hours and its intensity model does not transfer to every contrast
(BrainWeb T2/PD GM/WM Dice 0.60-0.66 from the tissue head alone); the EM adapts the class intensities to
the scan and keeps the network's anatomy. The defaults were chosen on the validation subject (MICCAI 1012,
weights of 2026-12-04; bench/deep.py measures the held-out ones): 15-structure Dice 0.690 (network) -> 0.717
(EM, ``prior_weight`` 1.5; 1.0 gave 0.712, 2.0 0.716, 3.0 0.713) -> 0.726 (smoothed 1 mm; 0.5 mm 0.720,
1.5 mm 0.722); tissues GM/WM 0.879/0.850 -> 0.895/0.916 (``tissue_prior_weight`` 1.0; 1.5 with a 0.02 floor gave
0.918/0.916 there but 0.85-0.91 on BrainWeb T2/PD, where 1.0 gives 0.93-0.94). ``refine="none"`` gives the network's own
arg-max (tissues renormalised inside the mask).

The network was trained by :mod:`mriquant.training.deep` on real T1 scans with expert labels and on
synthetic images of random contrast drawn from label maps, so it takes any MR contrast; the bundled weights,
their SHA-256 and the command that produced them are in ``mriquant/models/weights/manifest.json``.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import numpy.typing as npt

from mriquant.core.errors import InputError
from mriquant.core.image import Image, LabelImage
from mriquant.segment._tissue import check_choice
from mriquant.segment.base import Segmentation, Segmenter, register

__all__ = ["DeepOptions", "DeepSegmenter", "load_network"]

RefineChoice = Literal["em", "none"]

#: Native voxels interpolated per chunk when reading the probabilities back (bounds the memory).
CHUNK = 400_000

#: Structures per voxel the EM refinement weighs (the rest have negligible network probability).
TOP_CLASSES = 3

#: EM iterations of the structure refinement (chosen on the validation subject; 4-16 differ by < 0.002 Dice).
STRUCTURE_ITERATIONS = 4

#: Total probability below which a voxel has no evidence (it lies beyond the network's box).
EMPTY = 1e-6

#: Uniform floor added to the tissue head's probabilities before they become HMRF-EM priors.
TISSUE_PRIOR_FLOOR = 0.05


@dataclass(frozen=True)
class DeepOptions:
    """Options of ``deep``."""

    weights: str = field(
        default="default",
        metadata={"help": "'default' (bundled), a folder from `mriquant train --export`, or a training run folder"},
    )
    flip: bool = field(default=True, metadata={"help": "Average with the left-right mirrored input (2x time)"})
    threads: int = field(default=0, metadata={"help": "CPU threads for the network (0: PyTorch's default)"})
    refine: RefineChoice = field(
        default="em",
        metadata={"help": "em: fit the scan's intensities with the network's posteriors as priors; none: arg-max"},
    )
    prior_weight: float = field(
        default=1.5, metadata={"help": "Exponent of the structure posteriors in the EM refinement"}
    )
    tissue_prior_weight: float = field(
        default=1.0, metadata={"help": "Exponent of the tissue posteriors in the HMRF-EM refinement"}
    )
    smooth_mm: float = field(
        default=1.0, metadata={"help": "Gaussian sigma (mm) smoothing the refined structure posteriors (0: none)"}
    )
    atlas_tissue_share: float = field(
        default=0.5,
        metadata={"help": "Share of the atlas tissue prior mixed into the network's before the tissue EM (0-1)"},
    )
    structures: bool = field(
        default=True,
        metadata={"help": "Also label the 32 structures (off: tissues only, without the structure EM; "
                          "`run --no-structures` turns it off)"},
    )

    def __post_init__(self) -> None:
        check_choice("refine", self.refine, ("em", "none"))
        if self.threads < 0:
            raise InputError(f"Expected threads >= 0, found {self.threads}; use 0 for the default.")
        if not 0.0 <= self.atlas_tissue_share <= 1.0:
            raise InputError(f"Expected atlas_tissue_share in [0, 1], found {self.atlas_tissue_share}; "
                             "fix the options.")  # fmt: skip
        if not (self.prior_weight >= 0 and self.tissue_prior_weight >= 0 and self.smooth_mm >= 0):
            raise InputError(f"Expected prior weights and smooth_mm >= 0, found {self.prior_weight}, "
                             f"{self.tissue_prior_weight} and {self.smooth_mm}; fix the options.")  # fmt: skip


def load_network(weights: str = "default") -> tuple[Any, dict[str, Any]]:
    """The dual-task network in eval mode, and a description of its weights (name, version, SHA-256).

    ``weights`` is ``"default"`` (bundled, checked against the manifest), a folder with a ``manifest.json``
    (from ``mriquant train --export``; checked the same way), or a training run folder (``config.json`` and
    ``best.pt``, unchecked: a model being developed).
    """
    import torch

    from mriquant.models import WeightsError, file_sha256, load_weights
    from mriquant.models.deep_net import build_network
    from mriquant.models.unet import UNetConfig

    folder = None if weights == "default" else Path(weights)
    if folder is not None and not folder.is_dir():
        raise InputError(f"Expected --weights 'default' or a weights folder, found {weights!r}; check the path.")
    if folder is not None and (folder / "config.json").is_file() and not (folder / "manifest.json").is_file():
        import json

        config = UNetConfig.from_dict(json.loads((folder / "config.json").read_text())["architecture"])
        state = torch.load(folder / "best.pt", map_location="cpu", weights_only=True)
        entry: dict[str, Any] = {"file": str(folder / "best.pt"), "sha256": file_sha256(folder / "best.pt"),
                                 "version": "development"}  # fmt: skip
    else:
        try:
            state, config_dict, entry = load_weights("deep", folder=folder)
        except WeightsError as exc:
            raise InputError(str(exc)) from exc
        _check_prior(entry)
        config = UNetConfig.from_dict(config_dict)
    net = build_network(config)
    net.load_state_dict(state)
    net.eval()
    return net, {k: entry.get(k) for k in ("file", "sha256", "version", "date", "licence")}


def _check_prior(entry: dict[str, Any]) -> None:
    """Refuse weights trained with another atlas prior channel than the one this code feeds the network."""
    from mriquant.models.deep_net import PRIOR_ENTRY

    found = entry.get("prior")
    if found is not None and found != PRIOR_ENTRY:
        raise InputError(
            f"Expected deep weights trained with the prior {PRIOR_ENTRY}, found {found} in their manifest; "
            "use weights exported by this version of mriquant (`mriquant train --export`)."
        )


def _brain(image: Image, mask: LabelImage | None) -> npt.NDArray[np.bool_]:
    brain = (mask.array > 0) if mask is not None else (image.array != 0)
    if not np.any(brain):
        raise InputError("Expected a brain mask or a skull-stripped image (non-zero brain), found neither; "
                         "run without --skullstripped so the brain is extracted first.")  # fmt: skip
    values = image.array[brain]
    if not np.all(np.isfinite(values)) or float(np.ptp(values)) == 0.0:
        raise InputError("Expected finite, varying intensities inside the brain, found a constant or non-finite "
                         "image; check the input and the mask.")  # fmt: skip
    return brain


def _box_inputs(image: Image, brain: npt.NDArray[np.bool_], to_template: npt.NDArray[np.float64]) -> Any:
    """The network input on the working box: normalised brain image, coordinate and log-prior channels."""
    import torch
    import torch.nn.functional as F  # noqa: N812

    from mriquant.models.deep_net import fixed_channels
    from mriquant.models.inputs import box_coordinates, normalise_box, sample_grid

    template_to_voxel = np.linalg.inv(image.affine) @ np.linalg.inv(to_template)
    grid = sample_grid(template_to_voxel, box_coordinates(), image.shape)
    masked = np.where(brain, image.array, 0.0).astype(np.float32)
    source = torch.from_numpy(np.stack([masked, brain.astype(np.float32)]))[None]
    sampled = F.grid_sample(source, grid, mode="bilinear", padding_mode="zeros", align_corners=True)[0]
    inside = sampled[1] > 0.5
    normalised = normalise_box(sampled[0], inside)
    return torch.cat([normalised[None], fixed_channels()], dim=0), float(inside.sum())


def _native_probabilities(probs: Any, image: Image, brain: npt.NDArray[np.bool_],
                          to_template: npt.NDArray[np.float64]) -> npt.NDArray[np.float32]:  # fmt: skip
    """Box probabilities (C, X, Y, Z) read at every brain voxel of the native grid: (C, n_brain)."""
    import torch
    import torch.nn.functional as F  # noqa: N812

    from mriquant.models.deep_data import BOX

    voxel_to_box = np.linalg.inv(BOX.affine) @ to_template @ image.affine
    ijk = np.argwhere(brain).astype(np.float32)
    size = np.array([n - 1 for n in BOX.shape], np.float32)
    out = np.empty((probs.shape[0], len(ijk)), np.float32)
    source = probs[None]
    for start in range(0, len(ijk), CHUNK):
        chunk = ijk[start : start + CHUNK]
        box = chunk @ voxel_to_box[:3, :3].T.astype(np.float32) + voxel_to_box[:3, 3].astype(np.float32)
        grid = torch.from_numpy(2.0 * box / size - 1.0).flip(-1).view(1, -1, 1, 1, 3)
        sampled = F.grid_sample(source, grid, mode="bilinear", padding_mode="zeros", align_corners=True)
        out[:, start : start + len(chunk)] = sampled[0, :, :, 0, 0].numpy()
    return out


@register
class DeepSegmenter(Segmenter):
    """Dual-task U-Net: tissues (CSF/GM/WM) and 32 FreeSurfer structures in one pass."""

    name = "deep"
    kind = "dual"
    description = ("Deep learning: dual-task 3D U-Net (tissues + 32 structures), any contrast, affine to MNI152; "
                   "its posteriors are the priors of an intensity EM fitted to the scan")
    reference = ("Billot et al. 2023 Med Image Anal 86:102789 (SynthSeg); Cicek et al. 2016 (3D U-Net); "
                 "Puonti et al. 2016 NeuroImage 143:235 (SAMSEG, EM with spatial priors)")
    options_type = DeepOptions
    needs_registration = True
    registration_kind = "affine"

    def _to_template(self, image: Image, mask: LabelImage | None) -> npt.NDArray[np.float64]:
        from mriquant.preprocess.register import register_to_mni

        tx = self.to_mni if self.to_mni is not None else register_to_mni(image, mask=mask, kind="affine")
        return np.asarray(tx.affine_ras(), dtype=np.float64)

    def run(self, image: Image, mask: LabelImage | None) -> Segmentation:
        """Register (affine), run the network on the box, read the probabilities back at native voxels."""
        import torch

        from mriquant.models.deep_data import STRUCTURES
        from mriquant.models.deep_net import IMAGE_CHANNELS, N_STRUCTURES, N_TISSUES, predict_box

        opts: DeepOptions = self.options
        t0 = time.perf_counter()
        brain = _brain(image, mask)
        to_template = self._to_template(image, mask)
        t1 = time.perf_counter()
        net, weights = load_network(opts.weights)
        threads = torch.get_num_threads()
        if opts.threads:
            torch.set_num_threads(opts.threads)
        try:
            inputs, in_box = _box_inputs(image, brain, to_template)
            if in_box < 1000:
                raise InputError(
                    "Expected the brain inside the network's MNI152 box after registration, found "
                    f"{int(in_box)} voxels there; check the registration (to_mni) and the mask."
                )
            probs = predict_box(net, inputs, flip=opts.flip)
        finally:
            torch.set_num_threads(threads)
        t2 = time.perf_counter()
        atlas = inputs[IMAGE_CHANNELS + N_STRUCTURES + 1 : IMAGE_CHANNELS + N_STRUCTURES + N_TISSUES].exp()
        native = _native_probabilities(torch.cat([probs, atlas]), image, brain, to_template)
        structures, tissues = native[:N_STRUCTURES], native[N_STRUCTURES + 1 : N_STRUCTURES + N_TISSUES]
        atlas_tissues = native[N_STRUCTURES + N_TISSUES :]  # CSF, GM, WM of the atlas prior
        return self._result(image, brain, structures, tissues, atlas_tissues, np.asarray(STRUCTURES), weights,
                            {"registration_seconds": round(t1 - t0, 2), "network_seconds": round(t2 - t1, 2),
                             "resample_seconds": round(time.perf_counter() - t2, 2)})  # fmt: skip

    def _result(self, image: Image, brain: npt.NDArray[np.bool_], structures: npt.NDArray[np.float32],
                tissues: npt.NDArray[np.float32], atlas_tissues: npt.NDArray[np.float32], ids: npt.NDArray[np.int64],
                weights: dict[str, Any], timing: dict[str, float]) -> Segmentation:  # fmt: skip
        opts: DeepOptions = self.options
        t0 = time.perf_counter()
        outside = tissues.sum(axis=0) < EMPTY  # brain voxels beyond the box: no evidence, equal shares
        tissues = _renormalise(tissues)
        structures[0, outside] = 1.0  # ... and background for the structures
        info: dict[str, Any] = {"weights": weights, "flip": opts.flip, "refine": opts.refine,
                                "voxels_outside_box": int(outside.sum())}  # fmt: skip
        if opts.refine == "em":
            priors = _mix(tissues, atlas_tissues, opts.atlas_tissue_share)
            segmentation = refine_tissues(image, brain, priors, opts.tissue_prior_weight)
            info["tissue_em"] = {k: segmentation.info[k] for k in ("contrast", "class_means", "class_sd",
                                                                    "bias_range", "iterations")}  # fmt: skip
        else:
            segmentation = _tissue_segmentation(image, brain, tissues)
        meta = {"source": "deep", "segmentation": "deep"}
        dseg = self._structures(image, brain, structures, ids, info) if opts.structures else None
        info.update(timing, refine_seconds=round(time.perf_counter() - t0, 2))
        assert segmentation.tissue is not None
        return Segmentation(tissue=LabelImage(segmentation.tissue.array, image.affine.copy(), meta),
                            dseg=LabelImage(dseg, image.affine.copy(), meta) if dseg is not None else None,
                            probabilities=segmentation.probabilities, extras=segmentation.extras,
                            info=info)  # fmt: skip

    def _structures(self, image: Image, brain: npt.NDArray[np.bool_], structures: npt.NDArray[np.float32],
                    ids: npt.NDArray[np.int64], info: dict[str, Any]) -> npt.NDArray[np.int32]:  # fmt: skip
        """The structure label map (FreeSurfer ids), EM-refined unless ``refine="none"``; confidences into ``info``."""
        opts: DeepOptions = self.options
        if opts.refine == "em":
            x = np.asarray(image.array[brain], dtype=np.float32)
            winner, confidence = refine_structures(x, structures, opts.prior_weight, image, brain, opts.smooth_mm)
        else:
            winner, confidence = structures.argmax(axis=0), structures.max(axis=0)
        dseg = np.zeros(image.shape, np.int32)
        dseg[brain] = ids[winner]
        info["confidence"] = {int(ids[c]): round(float(confidence[winner == c].mean()), 4)
                              for c in np.unique(winner) if c != 0}  # fmt: skip
        return dseg


def _mix(tissues: npt.NDArray[np.float32], atlas: npt.NDArray[np.float32], share: float) -> npt.NDArray[np.float32]:
    """``(1 - share)`` of the network's tissue probabilities plus ``share`` of the atlas's (3, N), renormalised.

    The network learnt tissues from MICCAI 2012 labels, which leave sulcal CSF out; the atlas prior (SynthSeg's
    label maps, extracerebral CSF included) covers it. Alone, the network's prior let the EM absorb a bright
    sulcal CSF into GM on a T2 (BrainWeb subject 04: GM Dice 0.34).
    """
    if share == 0.0:
        return tissues
    return ((1.0 - share) * tissues + share * _renormalise(atlas)).astype(np.float32)


def _renormalise(probs: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
    """Columns of ``probs`` (C, N) scaled to sum to 1; columns without mass (beyond the box) become uniform."""
    total = probs.sum(axis=0)
    return np.where(total < EMPTY, np.float32(1.0 / len(probs)), probs / np.maximum(total, EMPTY)).astype(np.float32)


def _tissue_segmentation(image: Image, brain: npt.NDArray[np.bool_], tissues: npt.NDArray[np.float32]) -> Segmentation:
    """Tissue map (arg-max + 1) and CSF/GM/WM probability images from in-brain probabilities (3, N)."""
    tissue = np.zeros(image.shape, np.uint8)
    tissue[brain] = tissues.argmax(axis=0).astype(np.uint8) + 1
    probabilities = {}
    for k, name in enumerate(("CSF", "GM", "WM")):
        volume = np.zeros(image.shape, np.float32)
        volume[brain] = tissues[k]
        probabilities[name] = Image(volume, image.affine.copy(), {"source": "deep"})
    return Segmentation(tissue=LabelImage(tissue, image.affine.copy()), probabilities=probabilities)


def refine_structures(x: npt.NDArray[np.float32], structures: npt.NDArray[np.float32], prior_weight: float,
                      image: Image | None = None, brain: npt.NDArray[np.bool_] | None = None,
                      smooth_mm: float = 0.0) -> tuple[npt.NDArray[np.intp], npt.NDArray[np.float32]]:  # fmt: skip
    """Structure index and posterior of every brain voxel after EM with the network's posteriors as priors.

    Parameters
    ----------
    x : numpy.ndarray, float32, shape (N,)
        Intensities of the brain voxels.
    structures : numpy.ndarray, float32, shape (C, N)
        The structure head's probabilities at those voxels.
    prior_weight : float
        Exponent of the network's probabilities (``> 1`` trusts the network more than the intensities).
    image, brain : Image and numpy.ndarray of bool, optional
        The grid and the voxels of ``x`` (C order); needed when ``smooth_mm > 0``.
    smooth_mm : float
        Gaussian sigma (mm) of a smoothing of each structure's posterior before the arg-max (0: none).

    Returns
    -------
    winner : numpy.ndarray, intp, shape (N,)
        Channel index of the most probable structure.
    confidence : numpy.ndarray, float32, shape (N,)
        Its posterior probability.
    """
    from mriquant.segment.atlas import Region, SparsePosterior, em_labels, smoothed_winner

    prior = SparsePosterior.top(structures, TOP_CLASSES)
    posterior, _ = em_labels(x, prior, structures.shape[0], iterations=STRUCTURE_ITERATIONS, prior_weight=prior_weight)
    if smooth_mm <= 0 or image is None or brain is None:
        return posterior.winner(), posterior.value.max(axis=0)
    region = Region.of(image, LabelImage(brain.astype(np.uint8), image.affine.copy()))
    winner, confidence = smoothed_winner(posterior, structures.shape[0], region, smooth_mm)
    return winner, confidence.astype(np.float32)


def refine_tissues(image: Image, brain: npt.NDArray[np.bool_], tissues: npt.NDArray[np.float32],
                   prior_weight: float) -> Segmentation:  # fmt: skip
    """HMRF-EM tissues (``mrf``'s model: bias field, Potts prior, partial volumes) with the given tissue priors.

    ``tissues`` (3, N) are CSF/GM/WM probabilities at the ``brain`` voxels (C order): the tissue head's, mixed
    with the atlas's by the segmenter; they are floored at :data:`TISSUE_PRIOR_FLOOR` here.
    """
    from mriquant.segment._tissue import Region
    from mriquant.segment.mrf import MRFOptions, hmrf_em

    region = Region.from_inputs(image, LabelImage(brain.astype(np.uint8), image.affine.copy()))
    priors = tissues + np.float32(TISSUE_PRIOR_FLOOR)
    priors /= priors.sum(axis=0, keepdims=True)
    opts = MRFOptions(priors="none", prior_weight=prior_weight, contrast="auto")
    return hmrf_em(image, region, priors.astype(np.float32), opts, {"method": "deep", "priors": "deep"})
