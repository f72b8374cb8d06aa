"""Deep-learning segmentation of tissues and structures in one pass (``--method deep``).

The brain is affinely registered to MNI152 (or the pipeline's transform is reused: only its linear part is
used), resampled once onto the network's 1.5 mm working box (:data:`~mriquant.models.deep_data.BOX`),
normalised, and passed through the dual-task U-Net (:mod:`mriquant.models.deep_net`) with an optional
left-right flip test-time augmentation. The class probabilities are then read back at every native voxel of
the brain mask by trilinear interpolation through the same affine, so the arg-max is taken on the native
grid (sub-voxel boundaries rather than 1.5 mm blocks). Tissues are the tissue head's CSF/GM/WM probabilities
renormalised inside the mask; structures are the structure head's arg-max (FreeSurfer ids).

The network was trained by :mod:`mriquant.models.train_deep` on real T1 scans with expert labels and on
synthetic images of random contrast drawn from label maps, so it takes any MR contrast; the bundled weights,
their SHA-256 and the command that produced them are in ``mriquant/models/weights/manifest.json``.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from mriquant.core.errors import InputError
from mriquant.core.image import Image, LabelImage
from mriquant.segment.base import Segmentation, Segmenter, register

__all__ = ["DeepOptions", "DeepSegmenter", "load_network"]

#: Native voxels interpolated per chunk when reading the probabilities back (bounds the memory).
CHUNK = 400_000


@dataclass(frozen=True)
class DeepOptions:
    """Options of ``deep``."""

    weights: str = field(
        default="default",
        metadata={"help": "'default' (bundled), a folder from `mriquant train --export`, or a training run folder"},
    )
    flip: bool = field(default=True, metadata={"help": "Average with the left-right mirrored input (2x time)"})
    threads: int = field(default=0, metadata={"help": "CPU threads for the network (0: PyTorch's default)"})

    def __post_init__(self) -> None:
        if self.threads < 0:
            raise InputError(f"Expected threads >= 0, found {self.threads}; use 0 for the default.")


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
        config = UNetConfig.from_dict(config_dict)
    net = build_network(config)
    net.load_state_dict(state)
    net.eval()
    return net, {k: entry.get(k) for k in ("file", "sha256", "version", "date")}


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
    from mriquant.models.deep_synth import box_coordinates, normalise_box, sample_grid

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
    description = "Deep learning: dual-task 3D U-Net (tissues + 32 structures), any contrast, affine to MNI152"
    reference = "Billot et al. 2023 Med Image Anal 86:102789 (SynthSeg); Ronneberger/Cicek et al. 2016 (3D U-Net)"
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
        from mriquant.models.deep_net import N_STRUCTURES, predict_box

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
        native = _native_probabilities(probs, image, brain, to_template)
        structures, tissues = native[:N_STRUCTURES], native[N_STRUCTURES + 1 :]
        return self._result(image, brain, structures, tissues, np.asarray(STRUCTURES), weights,
                            {"registration_seconds": round(t1 - t0, 2), "network_seconds": round(t2 - t1, 2),
                             "resample_seconds": round(time.perf_counter() - t2, 2)})  # fmt: skip

    def _result(self, image: Image, brain: npt.NDArray[np.bool_], structures: npt.NDArray[np.float32],
                tissues: npt.NDArray[np.float32], ids: npt.NDArray[np.int64], weights: dict[str, Any],
                timing: dict[str, float]) -> Segmentation:  # fmt: skip
        total = tissues.sum(axis=0)
        outside = total < 1e-6  # brain voxels beyond the box: no evidence, equal shares
        tissues = np.where(outside, np.float32(1.0 / 3.0), tissues / np.maximum(total, 1e-6)).astype(np.float32)
        winner = structures.argmax(axis=0)
        dseg = np.zeros(image.shape, np.int32)
        dseg[brain] = ids[winner]
        tissue = np.zeros(image.shape, np.uint8)
        tissue[brain] = tissues.argmax(axis=0).astype(np.uint8) + 1
        probabilities = {}
        for k, name in enumerate(("CSF", "GM", "WM")):
            volume = np.zeros(image.shape, np.float32)
            volume[brain] = tissues[k]
            probabilities[name] = Image(volume, image.affine.copy(), {"source": "deep"})
        confidence = structures.max(axis=0)
        info = {
            "weights": weights, "flip": self.options.flip, **timing,
            "voxels_outside_box": int(outside.sum()),
            "confidence": {int(ids[c]): round(float(confidence[winner == c].mean()), 4)
                           for c in np.unique(winner) if c != 0},
        }  # fmt: skip
        meta = {"source": "deep", "segmentation": "deep"}
        return Segmentation(tissue=LabelImage(tissue, image.affine.copy(), meta),
                            dseg=LabelImage(dseg, image.affine.copy(), meta),
                            probabilities=probabilities, info=info)  # fmt: skip
