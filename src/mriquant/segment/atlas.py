"""Atlas-based segmentation of brain structures (``--method atlas``).

The subject is registered to MNI152 (affine + SyN; :func:`~mriquant.preprocess.register.register_to_mni`,
or the pipeline's transform). One warp of three coordinate images gives every native voxel its template
position (:meth:`~mriquant.core.transform.Transform.template_coordinates`), where the atlas is sampled:

- with a *library* (member label maps and intensities in template space): each member votes for its label
  at the voxel. ``majority`` counts the votes; ``local`` weights each member by how well its intensity
  image matches the subject's around the voxel, ``w = exp(-D / h)`` with ``D`` the Gaussian-weighted
  local mean squared difference of white-matter-normalised intensities and ``h`` the median of ``D``
  (locally weighted voting, Artaechevarria et al. 2009; Sabuncu et al. 2010);
- with priors only (the shipped atlas): the label frequencies are the prior.

``em`` (the default) then fits one Gaussian intensity model per label to the subject's own scan by
expectation-maximisation with those spatial priors (``posterior ∝ prior^w N(x; mu_k, sigma_k)``, as in
van Leemput et al. 1999 / Fischl et al. 2002), so boundaries follow the subject's contrast (any MR contrast);
the posteriors are smoothed (a light spatial prior) before the arg-max. ``majority`` and ``local`` take the
arg-max of the votes directly. Voxels where the atlas's background wins stay 0 (sulcal CSF, for atlases
that do not label it).

The default atlas (``--atlas default``) holds priors from the 20 SynthSeg training label maps (FreeSurfer
protocol, Apache-2.0). A library built from expert labels (e.g. the MICCAI 2012 training set, CC BY-NC,
so not shipped) is passed with ``--atlas FILE``; see :mod:`mriquant.training.atlas`.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import numpy.typing as npt
from scipy import ndimage

from mriquant.core.errors import InputError
from mriquant.core.image import Image, LabelImage
from mriquant.models.atlas import CEREBRAL_WM, Atlas, default_atlas, load_atlas
from mriquant.segment._tissue import check_choice
from mriquant.segment.base import Segmentation, Segmenter, register

__all__ = ["AtlasOptions", "AtlasSegmenter", "em_labels"]

F32 = npt.NDArray[np.float32]
Fusion = Literal["em", "majority", "local"]
#: Classes kept per voxel in the EM (the likeliest by prior; see TOP_MASS in the benchmark).
TOP_CLASSES = 4
#: Prior floor inside the log (so a label the atlas never puts at a voxel is unlikely, not impossible).
LOG_FLOOR = 1e-4


@dataclass(frozen=True)
class AtlasOptions:
    """Options of ``atlas``."""

    atlas: str = field(
        default="default",
        metadata={"help": "Atlas .npz (from python -m mriquant.training.atlas) or 'default' (SynthSeg-20 priors)"},
    )
    fusion: Fusion = field(default="em", metadata={"help": "em (priors x intensity model), majority or local voting"})
    exclude: str = field(default="", metadata={"help": "Comma-separated library members to leave out"})
    prior_weight: float = field(default=1.0, metadata={"help": "Exponent of the atlas prior in the EM posterior"})
    iterations: int = field(default=8, metadata={"help": "EM iterations"})
    smooth_mm: float = field(default=1.0, metadata={"help": "Gaussian sigma (mm) smoothing the posteriors"})
    local_sigma_mm: float = field(default=3.0, metadata={"help": "Neighbourhood sigma (mm) of local weighting"})

    def __post_init__(self) -> None:
        check_choice("fusion", self.fusion, ("em", "majority", "local"))
        if self.iterations < 1 or self.prior_weight < 0 or self.smooth_mm < 0 or self.local_sigma_mm <= 0:
            raise InputError(
                f"Expected iterations >= 1, prior_weight >= 0, smooth_mm >= 0 and local_sigma_mm > 0, found "
                f"{self.iterations}, {self.prior_weight}, {self.smooth_mm}, {self.local_sigma_mm}; fix the options."
            )


# ----------------------------------------------------------------------------------------------------------------------
# sampling the atlas at the subject's voxels


@dataclass(frozen=True)
class Region:
    """The voxels being labelled: a box of the native grid and the mask inside it."""

    box: tuple[slice, slice, slice]
    mask: npt.NDArray[np.bool_]
    spacing: npt.NDArray[np.float64]

    @classmethod
    def of(cls, image: Image, mask: LabelImage | None) -> Region:
        """The bounding box of ``mask`` (the whole grid without one), one voxel of margin."""
        inside = mask.array > 0 if mask is not None else np.ones(image.shape, bool)
        found = ndimage.find_objects(inside.astype(np.int8))[0]
        assert found is not None  # Segmenter.segment rejects empty masks
        box = tuple(slice(max(s.start - 1, 0), min(s.stop + 1, n)) for s, n in zip(found, image.shape, strict=True))
        spacing = np.sqrt((image.affine[:3, :3] ** 2).sum(axis=0))
        return cls((box[0], box[1], box[2]), inside[box], spacing)

    def to_volume(self, values: npt.NDArray[Any], fill: float = 0.0) -> npt.NDArray[Any]:
        """Scatter in-mask ``values`` (..., N) into the box (..., X, Y, Z)."""
        out = np.full((*values.shape[:-1], *self.mask.shape), fill, dtype=values.dtype)
        out[..., self.mask] = values
        return out


def _voxel_coordinates(world: F32, affine: npt.NDArray[np.float64]) -> F32:
    """Template world mm (3, N) -> voxel indices of the grid with ``affine``."""
    inv = np.linalg.inv(affine).astype(np.float32)
    return np.asarray(inv[:3, :3] @ world + inv[:3, 3:4], dtype=np.float32)


def trilinear(shape: tuple[int, ...], vox: F32) -> tuple[npt.NDArray[np.intp], F32]:
    """Flat indices (8, N) of the corners around voxel points ``vox`` (3, N) and their trilinear weights.

    Corners outside the grid get weight 0 (so points off the grid sample as 0), which lets any number of
    maps on that grid be sampled with two gathers and a sum each (:func:`sample_priors`).
    """
    base = np.floor(vox).astype(np.intp)
    frac = (vox - base).astype(np.float32)
    dims = np.array(shape, dtype=np.intp)[:, None]
    flat = np.empty((8, vox.shape[1]), np.intp)
    weight = np.empty((8, vox.shape[1]), np.float32)
    for corner in range(8):  # a loop over the 8 corners, vectorised over points
        offset = np.array([(corner >> a) & 1 for a in range(3)], dtype=np.intp)[:, None]
        index = base + offset
        inside = np.all((index >= 0) & (index < dims), axis=0)
        w = np.where(offset == 1, frac, 1.0 - frac).prod(axis=0)
        flat[corner] = np.ravel_multi_index(tuple(np.clip(index, 0, dims - 1)), shape)
        weight[corner] = np.where(inside, w, 0.0)
    return flat, weight


def sample_priors(atlas: Atlas, world: F32) -> F32:
    """Label priors (K + 1, N) at template points ``world`` (3, N): background first, columns sum to 1."""
    flat, weight = trilinear(atlas.priors.shape[1:], _voxel_coordinates(world, atlas.affine))
    out = np.empty((len(atlas.labels) + 1, world.shape[1]), np.float32)
    for k in range(len(atlas.labels)):
        out[k + 1] = (atlas.priors[k].ravel()[flat] * weight).sum(axis=0)
    out[1:] /= 255.0
    out[0] = np.clip(1.0 - out[1:].sum(axis=0), 0.0, 1.0)
    out /= np.maximum(out.sum(axis=0), 1e-6)
    return out


def sample_library(atlas: Atlas, world: F32) -> tuple[npt.NDArray[np.uint8], F32]:
    """Member labels (M, N; index into labels + 1) and intensities (M, N) at template points."""
    assert atlas.maps is not None and atlas.intensities is not None and atlas.maps_affine is not None
    vox = _voxel_coordinates(world, atlas.maps_affine)
    nearest = np.rint(vox).astype(np.intp)
    shape = np.array(atlas.maps.shape[1:])[:, None]
    inside = np.all((nearest >= 0) & (nearest < shape), axis=0)
    clipped = np.clip(nearest, 0, shape - 1)
    labels = atlas.maps[:, clipped[0], clipped[1], clipped[2]]
    labels[:, ~inside] = 0
    intensities = np.empty((atlas.maps.shape[0], world.shape[1]), np.float32)
    for m in range(atlas.maps.shape[0]):
        member = atlas.intensities[m].astype(np.float32)
        ndimage.map_coordinates(member, vox, output=intensities[m], order=1, mode="constant", cval=0.0)
    return labels, intensities


def vote(labels: npt.NDArray[np.uint8], n_classes: int, weights: F32 | None = None) -> F32:
    """Normalised (weighted) votes (n_classes, N) of member labels (M, N)."""
    n = labels.shape[1]
    votes = np.zeros((n_classes, n), np.float32)
    columns = np.arange(n)
    for m in range(labels.shape[0]):  # a loop over atlas members, vectorised over voxels
        votes[labels[m], columns] += 1.0 if weights is None else weights[m]
    out: F32 = votes / np.maximum(votes.sum(axis=0), 1e-12)
    return out


def local_weights(subject: F32, intensities: F32, region: Region, sigma_mm: float) -> F32:
    """Member weights (M, N): ``exp(-D / median(D))`` of the local mean squared intensity difference ``D``."""
    sigma = sigma_mm / region.spacing
    distance = np.empty_like(intensities)
    for m in range(intensities.shape[0]):
        squared = region.to_volume((subject - intensities[m]) ** 2)
        distance[m] = ndimage.gaussian_filter(squared, sigma)[region.mask]
    scale = np.float32(max(float(np.median(distance)), 1e-6))
    return np.asarray(np.exp(-distance / scale), dtype=np.float32)


# ----------------------------------------------------------------------------------------------------------------------
# the intensity model


@dataclass(frozen=True)
class SparsePosterior:
    """The ``k`` most probable classes of every voxel and their probabilities.

    Attributes
    ----------
    index : numpy.ndarray, intp, shape (k, N)
        Class indices (rows of the dense prior).
    value : numpy.ndarray, float32, shape (k, N)
        Their probabilities (columns sum to 1).
    """

    index: npt.NDArray[np.intp]
    value: F32

    @classmethod
    def top(cls, dense: F32, k: int) -> SparsePosterior:
        """Keep the ``k`` largest entries of every column of ``dense`` (C, N), renormalised."""
        k = min(k, dense.shape[0])
        index = np.argpartition(-dense, k - 1, axis=0)[:k] if k < dense.shape[0] else np.indices(dense.shape)[0]
        value = np.take_along_axis(dense, index, axis=0).astype(np.float32)
        value /= np.maximum(value.sum(axis=0, keepdims=True), 1e-12)
        return cls(index.astype(np.intp), value)

    def class_sums(self, n_classes: int, weights: F32 | None = None) -> npt.NDArray[np.float64]:
        """Sum over voxels of each class's probability (times ``weights``, shape (N,))."""
        values = self.value if weights is None else self.value * weights[None, :]
        return np.bincount(self.index.ravel(), weights=values.ravel(), minlength=n_classes).astype(np.float64)

    def winner(self) -> npt.NDArray[np.intp]:
        """The most probable class of every voxel."""
        best = np.argmax(self.value, axis=0)
        return np.asarray(np.take_along_axis(self.index, best[None, :], axis=0)[0], dtype=np.intp)


def em_labels(
    x: F32, priors: SparsePosterior, n_classes: int, *, iterations: int, prior_weight: float
) -> tuple[SparsePosterior, dict[str, Any]]:
    """EM of one Gaussian per class with fixed spatial priors, over each voxel's likeliest classes.

    Parameters
    ----------
    x : numpy.ndarray, shape (N,)
        Intensities of the voxels.
    priors : SparsePosterior
        The spatial prior's ``k`` largest classes at every voxel.
    n_classes : int
        Number of classes in all.
    iterations : int
        EM iterations.
    prior_weight : float
        Exponent of the prior.

    Returns
    -------
    posterior : SparsePosterior
        Class posteriors over the same classes.
    info : dict
        Means and standard deviations of the classes.
    """
    log_prior = prior_weight * np.log(np.maximum(priors.value, LOG_FLOOR))
    x64 = x.astype(np.float64)
    floor = (0.02 * (float(np.std(x)) or 1.0)) ** 2
    posterior = priors
    mean = var = np.zeros(n_classes)
    for _ in range(iterations):
        mass = np.maximum(posterior.class_sums(n_classes), 1e-6)
        mean = posterior.class_sums(n_classes, x) / mass
        var = np.maximum(posterior.class_sums(n_classes, (x64**2).astype(np.float32)) / mass - mean**2, floor)
        mu, v = mean.astype(np.float32)[priors.index], var.astype(np.float32)[priors.index]
        logits = log_prior - 0.5 * (x[None, :] - mu) ** 2 / v - 0.5 * np.log(v)
        logits -= logits.max(axis=0, keepdims=True)
        value = np.exp(logits)
        value /= value.sum(axis=0, keepdims=True)
        posterior = SparsePosterior(priors.index, value.astype(np.float32))
    return posterior, {"means": mean.round(3).tolist(), "sds": np.sqrt(var).round(3).tolist()}


def smoothed_winner(posterior: SparsePosterior, n_classes: int, region: Region, sigma_mm: float) -> tuple[
        npt.NDArray[np.intp], F32]:  # fmt: skip
    """Arg-max of the Gaussian-smoothed posteriors (a light spatial prior) and its smoothed probability.

    Each class is smoothed only inside the box where it has probability (plus three sigmas), so small
    structures cost little.
    """
    best = np.zeros(posterior.index.shape[1], np.float32)
    winner = posterior.winner()
    if sigma_mm <= 0:
        return winner, posterior.value.max(axis=0)
    sigma = sigma_mm / region.spacing
    margin = np.ceil(3 * sigma).astype(int)
    flat = np.flatnonzero(region.mask)
    coords = np.unravel_index(flat, region.mask.shape)
    for c in np.unique(posterior.index):
        volume = np.zeros(region.mask.shape, np.float32)
        hit = posterior.index == c
        cols = np.nonzero(hit.any(axis=0))[0]
        volume[coords[0][cols], coords[1][cols], coords[2][cols]] = np.where(hit, posterior.value, 0).sum(axis=0)[cols]
        lo = np.maximum(np.array([a[cols].min() for a in coords]) - margin, 0)
        hi = np.minimum(np.array([a[cols].max() for a in coords]) + margin + 1, region.mask.shape)
        box = tuple(slice(int(a), int(b)) for a, b in zip(lo, hi, strict=True))
        smooth = np.zeros_like(volume)
        smooth[box] = ndimage.gaussian_filter(volume[box], sigma)
        values = smooth[region.mask]
        better = values > best
        best[better], winner[better] = values[better], c
    return winner, best


def _wm_scale(x: F32, priors: F32, labels: npt.NDArray[np.int32]) -> float:
    """The subject's cerebral white-matter mean (prior-weighted), the scale of the library intensities."""
    rows = [i + 1 for i, label in enumerate(labels) if int(label) in CEREBRAL_WM]
    weight = priors[rows].sum(axis=0) if rows else np.zeros_like(x)
    weight = np.where(weight > 0.8, weight, 0.0)
    if weight.sum() < 100:
        return float(np.percentile(x, 90))
    return float((weight * x).sum() / weight.sum())


# ----------------------------------------------------------------------------------------------------------------------
# the segmenter


@register
class AtlasSegmenter(Segmenter):
    """Atlas registration + label fusion (or atlas priors + EM) into FreeSurfer structures."""

    name = "atlas"
    kind = "structure"
    description = "Atlas segmentation: MNI152 SyN registration, atlas priors x intensity EM or multi-atlas voting"
    reference = "Fischl et al. 2002 Neuron 33:341; Artaechevarria et al. 2009 IEEE TMI 28:1266"
    options_type = AtlasOptions
    needs_registration = True
    registration_kind = "syn"

    def _atlas(self) -> Atlas:
        opts: AtlasOptions = self.options
        atlas = default_atlas() if opts.atlas == "default" else load_atlas(opts.atlas)
        members = set(atlas.meta.get("members", []))
        excluded = [name for name in opts.exclude.split(",") if name in members]  # others: nothing to leave out
        if excluded:
            atlas = atlas.without(excluded)
        if opts.fusion == "local" and not atlas.has_library:
            raise InputError(f"Expected an atlas with a library for --fusion local, found priors only in "
                             f"{atlas.name}; use --fusion em or majority, or build one with a library.")  # fmt: skip
        return atlas

    def _transform(self, image: Image, mask: LabelImage | None) -> Any:
        from mriquant.preprocess.register import register_to_mni

        tx = self.to_mni
        if tx is None or "syn" not in str(tx.kind):
            tx = register_to_mni(image, mask=mask, kind="syn")
        return tx

    def _priors(self, atlas: Atlas, x: F32, world: F32, region: Region) -> tuple[F32, dict[str, Any]]:
        opts: AtlasOptions = self.options
        if not atlas.has_library:
            return sample_priors(atlas, world), {"priors": "probabilistic"}
        members, intensities = sample_library(atlas, world)
        n_classes = len(atlas.labels) + 1
        votes = vote(members, n_classes)
        info: dict[str, Any] = {"priors": "library votes", "members": len(members)}
        if opts.fusion in ("local", "em"):
            scale = _wm_scale(x, votes, atlas.labels)
            votes = vote(members, n_classes, local_weights(x / np.float32(scale), intensities, region,
                                                           opts.local_sigma_mm))  # fmt: skip
            info["priors"] = "locally weighted library votes"
        return votes, info

    def run(self, image: Image, mask: LabelImage | None) -> Segmentation:
        """Register, sample the atlas at the in-mask voxels, fuse, and write FreeSurfer ids."""
        opts: AtlasOptions = self.options
        t0 = time.perf_counter()
        atlas = self._atlas()
        region = Region.of(image, mask)
        inside = image.array[region.box][region.mask]
        if not np.all(np.isfinite(inside)) or float(np.ptp(inside)) == 0.0:
            raise InputError("Expected finite, varying intensities inside the brain mask, found a constant or "
                             "non-finite image; check the input and the mask.")  # fmt: skip
        tx = self._transform(image, mask)
        t1 = time.perf_counter()
        world = tx.template_coordinates()[(slice(None), *region.box)][:, region.mask]
        outside = np.isnan(world).any(axis=0)
        world = np.nan_to_num(world, nan=1e4)
        x = inside.astype(np.float32)
        priors, info = self._priors(atlas, x, world, region)
        priors[:, outside] = 0.0
        priors[0, outside] = 1.0
        n_classes = len(atlas.labels) + 1
        if opts.fusion == "em":
            sparse = SparsePosterior.top(priors, TOP_CLASSES)
            del priors
            posterior, em_info = em_labels(x, sparse, n_classes, iterations=opts.iterations,
                                           prior_weight=opts.prior_weight)  # fmt: skip
            winner, confidence = smoothed_winner(posterior, n_classes, region, opts.smooth_mm)
            info["em"] = em_info
        else:
            winner, confidence = np.argmax(priors, axis=0), priors.max(axis=0)
        ids = np.concatenate([[0], atlas.labels]).astype(np.int32)
        dseg = np.zeros(image.shape, np.int32)
        dseg[region.box] = region.to_volume(ids[winner])
        info.update(
            atlas=atlas.name, members=list(atlas.meta.get("members", [])), fusion=opts.fusion,
            registration_seconds=round(t1 - t0, 1), fusion_seconds=round(time.perf_counter() - t1, 1),
            confidence={int(ids[c]): round(float(confidence[winner == c].mean()), 4)
                        for c in np.unique(winner) if c != 0},
        )  # fmt: skip
        meta = {"source": "atlas", "segmentation": "atlas"}  # names the algorithm family in DICOM SEG
        return Segmentation(dseg=LabelImage(dseg, image.affine.copy(), meta), info=info)
