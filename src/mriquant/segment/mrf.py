"""Hidden Markov random field EM tissue segmentation (``--method mrf``, the default classical method).

The model of FSL FAST and ANTs Atropos, written from the papers: each in-mask voxel ``i`` has a
hidden tissue ``z_i`` in {CSF, GM, WM}; its (bias-corrected) intensity is Gaussian given the
tissue, ``y_i / b_i ~ N(mu_k, sigma_k^2)``; the labels follow a Potts Markov random field,
``p(z) ∝ exp(beta sum_{i~j} w_ij [z_i = z_j])``, optionally times registered atlas priors
``pi_ik^prior_weight``; and ``b`` is a smooth multiplicative bias field. EM alternates:

1. **E-step (mean field)**: ``p_ik ∝ N(y_i / b_i | mu_k, sigma_k^2) exp(beta sum_j w_ij p_jk) pi_ik^w``,
   the neighbour sums being one vectorised pass of shifted slices (6-neighbourhood, weights
   ``1 / spacing`` normalised to 1 at 1 mm) or a 3x3x3 box filter (26-neighbourhood, equal weights
   scaled so the total matches six neighbours);
2. **M-step**: ``mu_k, sigma_k`` from the posteriors and the corrected intensities. With
   ``variance="tied"`` one pooled variance is shared; ``"auto"`` (default) ties the variances when
   the classes are in T1 order (CSF < GM < WM) and keeps one per class otherwise. Measured during
   development on the MICCAI 2012 T1 scans: CSF partial volume widens the T1 GM class, and a wide
   GM Gaussian pulls the GM/WM decision into the white matter (WM Dice 0.902 per class vs 0.916
   tied, 5 subjects); on T2/PD the bright, wide CSF class needs its own variance (BrainWeb T2,
   40 % bias: WM Dice 0.93 per class vs 0.86 tied).
3. **bias step** (every ``bias_every`` iterations, from the first): each voxel's corrected intensity
   is compared with its expected mean under a 5-Gaussian model of the corrected histogram (the
   three classes plus a mixel component between each adjacent pair, a few EM steps), so partial-
   volume voxels are not read as bias. The log ratio, weighted by its inverse variance (voxels
   beyond :data:`BIAS_OUTLIER_SD` excluded), is fitted by a Legendre polynomial of total degree
   ``bias_order`` in the voxel coordinates (weighted least squares on a regular subsample of
   :data:`BIAS_SAMPLES` voxels); the field is normalised to geometric mean 1 in the mask and
   output on the whole grid (coordinates clamped to the mask's box beyond it) as ``bias_field``.

   The degree is chosen per scan by default (``bias_order=0``): EM runs to convergence with a
   linear field, then continues from there with a degree-3 field, which is kept only when its
   classes have a GM/WM contrast-to-noise ratio ``|mu_WM - mu_GM| / sqrt((var_GM + var_WM) / 2)``
   at least :data:`AUTO_MIN_GAIN` (2 %) larger (:func:`gm_wm_cnr`; both values are in
   ``info["bias_order_cnr"]``). The reason: a field
   of degree 2 or more can take the shape of the tissue layout itself (cortex outside, white
   matter inside); on noisy (9 %) or coarse (3-4 mm) phantoms it grew into a dome that compressed
   the GM/WM contrast (WM Dice 0.59 instead of 0.91), while a real non-linear field, once
   removed, sharpens it. Measured with both degrees run from scratch (2026-12-04, BrainWeb 04/05
   T1/T2/PD at 3 % and 9 % noise, 0-40 % bias, and 5 MICCAI subjects): the larger CNR went with the
   larger WM Dice in 26 of 29 scans, and the three exceptions differ by <= 0.003. Where a real field
   was removed the gain was 2.8-14 %; on the MICCAI scans it was below 1 % or negative (the margin:
   continuing from the linear fit, subject 1013 gained 0.09 % and lost 0.005 WM Dice). BrainWeb PD with
   a 40 % field: GM/WM 0.90/0.91 with degree 1, 0.94/0.94 with degree 3 (chosen); at 9 % noise
   degree 1 is better and chosen; on the (already corrected) MICCAI scans degree 1 is mostly
   chosen. A fixed degree (1-6) skips the choice; ``bias=False`` skips the bias step.

EM stops when the mean absolute change of the posteriors falls below ``tol`` (or at
``max_iter``); ``info["iterations"]`` records how many ran.

Initialisation and contrast
---------------------------
k-means on the intensities gives three sorted classes; the contrast's order maps them to
tissues (see :mod:`mriquant.segment._tissue`). With ``contrast="auto"`` (the default) and MNI
priors the map is the permutation of classes to tissues that maximises the mean prior probability
of each class's voxels (works for T1, T2, PD and FLAIR alike); without priors the ``auto`` rule of
the other methods applies. Measured: the same Dice as ``contrast="T1"`` on MICCAI 2012 subjects
1000, 1013, 1014 (identical segmentations), and on simulated BrainWeb T2/PD (subjects 04, 05, 3 %
noise, 20 % bias) GM/WM 0.938-0.944 / 0.941-0.951, where the old ``T1`` default swapped WM and CSF
(WM Dice 0) in ``run``.

Priors
------
``priors="mni"`` registers the MNI ICBM152 2009a template (shipped with nilearn, read through
:mod:`mriquant.preprocess.template`) to the subject and resamples its GM and WM probability maps;
CSF is ``1 - GM - WM``. Each prior is floored at :data:`PRIOR_FLOOR` so no tissue is ever
excluded, and enters the E-step as ``prior_weight * log(prior)``. ``registration="masks"``
(default) aligns the template's brain mask to the subject's by a least-squares affine
(:func:`~mriquant.segment._tissue.register_brain_masks`): it ignores intensities, so it works for
any contrast, is deterministic, and takes 2-5 s; ``registration="ants"`` uses
:func:`mriquant.preprocess.register.register_to_mni` (Mattes MI against the T1 template: T1 only,
20-30 s on two cores, priors of the same quality on MICCAI 2012: GM/WM agreement of the prior
arg-max with the truth 0.757/0.650 vs 0.767/0.659 with masks on subject 1000).

Partial volume
--------------
After EM, each voxel may be pure (CSF, GM, WM) or a mixel of two tissues adjacent in intensity
(a FAST-style mixel model, Santago & Gage 1993): a mixel's intensity is the noisy mix of the
two class means with a uniform fraction, whose density is
``(Phi((y - mu_a) / s) - Phi((y - mu_b) / s)) / (mu_b - mu_a)``. A mixel a/b is only possible
where both tissues occur in the voxel's 3x3x3 neighbourhood (prior ``4 q_a q_b`` with ``q`` the
local mean posterior). The partial-volume estimate of tissue k is the posterior of pure k plus
the mixel posteriors times the expected fraction, ``clip((y - mu_a) / (mu_b - mu_a), 0, 1)``;
the three sum to 1 in the mask (extras ``pve_CSF``, ``pve_GM``, ``pve_WM``).

References
----------
Zhang, Y., Brady, M., Smith, S. (2001). Segmentation of brain MR images through a hidden Markov
random field model and the expectation-maximization algorithm. IEEE Trans. Med. Imaging 20(1), 45-57.
Avants, B. B., Tustison, N. J., Wu, J., Cook, P. A., Gee, J. C. (2011). An open source multivariate
framework for n-tissue segmentation with evaluation on public data. Neuroinformatics 9(4), 381-400.
Wells, W. M., Grimson, W. E. L., Kikinis, R., Jolesz, F. A. (1996). Adaptive segmentation of MRI
data. IEEE Trans. Med. Imaging 15(4), 429-442.
Santago, P., Gage, H. D. (1993). Quantification of MR brain images by mixture density and partial
volume modeling. IEEE Trans. Med. Imaging 12(3), 566-574.
Fonov, V. et al. (2011). Unbiased average age-appropriate atlases for pediatric studies.
NeuroImage 54(1), 313-327 (the MNI ICBM152 2009 templates).
"""

from __future__ import annotations

import dataclasses
import itertools
import time
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import numpy.typing as npt
from scipy import special

from mriquant.core.errors import InputError
from mriquant.core.image import Image, LabelImage
from mriquant.segment._tissue import (
    CONTRAST_HELP,
    CONTRAST_ORDER,
    TISSUES,
    ContrastName,
    Histogram,
    Region,
    assemble,
    box_sum,
    check_choice,
    class_means,
    neighbour_sum,
    resolve_contrast,
)
from mriquant.segment.base import Segmentation, Segmenter, register
from mriquant.segment.gmm import Mixture, VarianceChoice, fit_mixture, gaussian_logits
from mriquant.segment.kmeans import kmeans_1d

__all__ = ["BiasModel", "MRFOptions", "MRFSegmenter", "gm_wm_cnr", "hmrf_em", "partial_volumes"]

F32 = npt.NDArray[np.float32]
F64 = npt.NDArray[np.float64]
PriorChoice = Literal["mni", "none"]
RegistrationChoice = Literal["masks", "ants"]

#: Smallest prior probability of any tissue (before renormalising), so atlas errors stay recoverable.
PRIOR_FLOOR = 0.02
#: Voxels whose corrected intensity lies further than this many SD from their class mean do not inform the bias.
BIAS_OUTLIER_SD = 2.5
#: EM steps of the 5-Gaussian intensity model behind each bias update.
BIAS_EM_STEPS = 20
#: Voxels used to fit the bias polynomial (a regular subsample of the mask).
BIAS_SAMPLES = 200_000

#: The degree ``bias_order=0`` (auto) tries after the linear field.
AUTO_HIGH_ORDER = 3
#: ... and the relative GM/WM contrast-to-noise gain it must bring to be kept (ties go to the robust linear field).
AUTO_MIN_GAIN = 0.02


@dataclass(frozen=True)
class MRFOptions:
    """Options of ``mrf``."""

    contrast: ContrastName = field(default="auto", metadata={"help": CONTRAST_HELP + "; default auto"})
    beta: float = field(default=0.3, metadata={"help": "Potts MRF weight per neighbour (0 = no spatial prior)"})
    neighbourhood: int = field(default=6, metadata={"help": "MRF neighbourhood: 6 (faces) or 26 (3x3x3 box)"})
    priors: PriorChoice = field(default="mni", metadata={"help": "Atlas priors: mni (registered MNI152) or none"})
    prior_weight: float = field(default=0.5, metadata={"help": "Exponent of the atlas priors (0 = ignore them)"})
    registration: RegistrationChoice = field(
        default="masks",
        metadata={"help": "Prior registration: masks (brain-mask affine, any contrast, fast) or ants (T1 MI affine)"},
    )
    variance: VarianceChoice = field(
        default="auto",
        metadata={"help": "Class variances: class (one per tissue), tied (one shared), or auto (tied when the "
                          "classes are in T1 order CSF<GM<WM, else class)"},
    )
    bias: bool = field(default=True, metadata={"help": "Re-estimate a smooth multiplicative bias field in EM"})
    bias_order: int = field(
        default=0,
        metadata={"help": "Total degree of the bias polynomial, 1-6; 0 = auto: degree 1, then 3 from there, keeping "
                          "the one with the larger GM/WM contrast-to-noise"},
    )
    bias_every: int = field(default=2, metadata={"help": "Update the bias field every this many iterations"})
    max_iter: int = field(default=40, metadata={"help": "Most EM iterations"})
    tol: float = field(default=1e-3, metadata={"help": "Stop when the mean absolute posterior change is below"})

    def __post_init__(self) -> None:
        check_choice("contrast", self.contrast, (*CONTRAST_ORDER, "auto"))
        check_choice("priors", self.priors, ("mni", "none"))
        check_choice("registration", self.registration, ("masks", "ants"))
        check_choice("variance", self.variance, ("auto", "class", "tied"))
        check_choice("neighbourhood", self.neighbourhood, (6, 26))
        check_choice("bias_order", self.bias_order, tuple(range(0, 7)))
        if not (self.beta >= 0 and self.prior_weight >= 0 and self.bias_every >= 1 and self.max_iter >= 1
                and self.tol > 0):
            raise InputError(
                f"Expected beta >= 0, prior_weight >= 0, bias_every >= 1, max_iter >= 1 and tol > 0, found "
                f"{self.beta}, {self.prior_weight}, {self.bias_every}, {self.max_iter}, {self.tol}; "
                "fix the mrf options."
            )


# --------------------------------------------------------------------------- class model


@dataclass(frozen=True)
class Classes:
    """Gaussian class parameters in tissue order (CSF, GM, WM), shape (3,) each."""

    means: F64
    variances: F64

    def logits(self, values: F32) -> F32:
        """``log N(values | mu_k, sigma_k^2)`` up to a constant, shape (3, N), float32."""
        out = np.empty((3, values.size), dtype=np.float32)
        for k in range(3):
            np.subtract(values, np.float32(self.means[k]), out=out[k])
            np.square(out[k], out=out[k])
            out[k] *= np.float32(-0.5 / self.variances[k])
            out[k] += np.float32(-0.5 * np.log(self.variances[k]))
        return out

    @classmethod
    def fit(cls, values: F32, probs: F32, floor: float, tied: bool = False) -> Classes:
        """M-step: posterior-weighted means and variances (floored at ``floor``); ``probs`` is (3, N).

        ``tied``: one variance for all classes (the posterior-weighted pooled variance).
        """
        weight = np.maximum(probs.sum(axis=1, dtype=np.float64), 1e-12)
        means = (probs @ values).astype(np.float64) / weight
        centred = np.empty_like(values)
        variances = np.empty(3)
        for k in range(3):
            np.subtract(values, np.float32(means[k]), out=centred)
            np.square(centred, out=centred)
            variances[k] = float(probs[k] @ centred) / weight[k]
        if tied:
            variances[:] = float(variances @ weight / weight.sum())
        return cls(means, np.maximum(variances, floor))


def softmax_classes(logits: F32) -> F32:
    """Softmax over the class axis of ``logits`` (3, N), in place; columns sum to 1."""
    top = np.maximum(np.maximum(logits[0], logits[1]), logits[2])
    logits -= top[None, :]
    np.exp(logits, out=logits)
    total = logits[0] + logits[1]
    total += logits[2]
    logits /= total[None, :]
    return logits


# --------------------------------------------------------------------------- bias field


@dataclass(frozen=True)
class BiasModel:
    """Legendre polynomial log-bias over the mask's bounding box.

    Attributes
    ----------
    terms : list of (int, int, int)
        Degrees ``(a, b, c)`` along the three array axes, ``a + b + c <= order``.
    axes : tuple of numpy.ndarray
        Legendre values on each box axis, shapes ``(n_axis, order + 1)``.
    design : numpy.ndarray, shape (S, T)
        Basis values at the fit subsample.
    sample : numpy.ndarray of int, shape (S,)
        Indices (into the N in-mask voxels) of the fit subsample.
    """

    order: int
    terms: list[tuple[int, int, int]]
    axes: tuple[F64, F64, F64]
    design: F64
    sample: npt.NDArray[np.intp]

    @classmethod
    def build(cls, region: Region, order: int) -> BiasModel:
        """Basis of total degree ``order`` on ``region``'s box and its subsample design matrix."""
        coords = region.coordinates()
        vx, vy, vz = (np.asarray(np.polynomial.legendre.legvander(c.astype(np.float64), order), np.float64)
                      for c in coords)
        axes = (vx, vy, vz)
        terms = [(a, b, c) for a, b, c in itertools.product(range(order + 1), repeat=3) if a + b + c <= order]
        step = max(1, region.n // BIAS_SAMPLES)
        sample = np.arange(0, region.n, step, dtype=np.intp)
        ijk = [a[sample] for a in np.nonzero(region.inside)]
        design = np.stack([axes[0][ijk[0], a] * axes[1][ijk[1], b] * axes[2][ijk[2], c] for a, b, c in terms], 1)
        return cls(order, terms, (axes[0], axes[1], axes[2]), design, sample)

    def fit(self, residual: F64, weight: F64) -> F64:
        """Weighted least-squares coefficients (T,) of the log-bias ``residual`` at the subsample."""
        weighted = self.design * (weight / max(float(weight.sum()), 1e-300))[:, None]
        gram = weighted.T @ self.design
        gram[np.diag_indices_from(gram)] += 1e-9 * float(np.trace(gram)) / gram.shape[0] + 1e-12
        return np.asarray(np.linalg.solve(gram, weighted.T @ residual), dtype=np.float64)

    def evaluate(self, coef: F64, axes: tuple[F64, F64, F64] | None = None) -> F32:
        """The log-bias on the grid of ``axes`` (default: the box), float32."""
        vx, vy, vz = axes or self.axes
        tensor = np.zeros((self.order + 1,) * 3)
        for (a, b, c), value in zip(self.terms, coef, strict=True):
            tensor[a, b, c] = value
        out = np.einsum("abc,ia,jb,kc->ijk", tensor, vx, vy, vz, optimize=True)
        return np.asarray(out, dtype=np.float32)


def _intensity_model(corrected: F32, classes: Classes) -> Mixture:
    """A 5-Gaussian mixture of the corrected intensities: the 3 classes and a mixel class between each adjacent pair.

    Fitted by a few EM steps on the histogram, starting at the sorted class means and their midpoints.
    Partial-volume voxels fall in the mixel components, so pure voxels are compared with pure means.
    """
    mu = np.sort(classes.means)
    means = np.array([mu[0], 0.5 * (mu[0] + mu[1]), mu[1], 0.5 * (mu[1] + mu[2]), mu[2]])
    variances = np.full(5, float(np.min(classes.variances)))
    init = Mixture(means, variances, np.full(5, 0.2))
    return fit_mixture(Histogram.of(corrected), init, max_iter=BIAS_EM_STEPS, tol=1e-9)


def _bias_residual(values: F32, bias: F32, classes: Classes) -> tuple[F64, F64]:
    """Log ratio of each voxel's intensity to its expected mean under :func:`_intensity_model`, and its weight.

    The weight is the inverse variance of the log intensity; voxels further than
    :data:`BIAS_OUTLIER_SD` standard deviations from their expected mean (vessels, lesions) get 0.
    """
    y = values.astype(np.float64)
    corrected = y / bias.astype(np.float64)
    mix = _intensity_model(corrected.astype(np.float32), classes)
    logits = gaussian_logits(corrected, mix)
    resp = np.exp(logits - logits.max(axis=1, keepdims=True))
    resp /= resp.sum(axis=1, keepdims=True)
    precision = resp / mix.variances[None, :]
    total = precision.sum(axis=1)
    target = (precision @ mix.means) / total
    z = (corrected - target) * np.sqrt(total)
    ok = (y > 0) & (target > 0) & (np.abs(z) < BIAS_OUTLIER_SD)
    residual = np.where(ok, np.log(np.where(ok, y, 1.0) / np.where(ok, target, 1.0)), 0.0)
    return residual, np.where(ok, total * target**2, 0.0)


def estimate_bias(model: BiasModel, region: Region, bias: F32, classes: Classes) -> tuple[F32, F64] | None:
    """Fit the log-bias to the current classes; the field at the N voxels (mean log 0) and its coefficients.

    Returns None when too few voxels are usable (the caller keeps the previous field).
    """
    s = model.sample
    residual, weight = _bias_residual(region.values[s], bias[s], classes)
    if np.count_nonzero(weight) < 10 * len(model.terms):
        return None
    coef = model.fit(residual, weight)
    log_field = model.evaluate(coef)[region.inside]
    shift = float(log_field.mean(dtype=np.float64))
    coef[model.terms.index((0, 0, 0))] -= shift
    return np.exp(log_field - np.float32(shift)), coef


def bias_image(model: BiasModel, coef: F64, image: Image, region: Region) -> F32:
    """The bias field on ``image``'s whole grid (coordinates clamped to the box beyond it), float32."""
    axes = []
    for axis, sl in enumerate(region.box):
        n = region.inside.shape[axis]
        idx = (np.arange(image.shape[axis], dtype=np.float64) - sl.start) / max(n - 1, 1) * 2.0 - 1.0
        axes.append(np.polynomial.legendre.legvander(np.clip(idx, -1.0, 1.0), model.order))
    return np.exp(model.evaluate(coef, (axes[0], axes[1], axes[2])))


# --------------------------------------------------------------------------- MRF


class Neighbours:
    """Mean-field neighbour sums of per-voxel class probabilities inside the box."""

    def __init__(self, region: Region, size: int) -> None:
        self.region = region
        self.size = size
        spacing = np.asarray(region.spacing, dtype=np.float64)
        w = 1.0 / spacing
        self.weights = (float(w[0]), float(w[1]), float(w[2]))
        self.buffer = np.zeros(region.inside.shape, dtype=np.float32)

    def sums(self, probs: F32) -> F32:
        """``sum_j w_ij p_jk`` for every class and voxel; ``probs`` and the result are (3, N)."""
        out = np.empty_like(probs)
        inside = self.region.inside
        for k in range(probs.shape[0]):
            self.buffer[inside] = probs[k]
            if self.size == 6:
                out[k] = neighbour_sum(self.buffer, self.weights)[inside]
            else:
                out[k] = box_sum(self.buffer)[inside] * np.float32(6.0 / 26.0)
        return out


@dataclass
class EMState:
    """What the EM loop carries: posteriors, class parameters, bias at the voxels and its coefficients."""

    probs: F32
    classes: Classes
    bias: F32
    coef: F64 | None = None
    tied: bool = False
    iterations: int = 0
    converged: bool = False
    history: list[float] = field(default_factory=list)
    order: int = 1
    selection: dict[int, float] = field(default_factory=dict)


def _e_step(region: Region, state: EMState, neighbours: Neighbours, log_prior: F32 | None,
            opts: MRFOptions) -> F32:
    logits = state.classes.logits(region.values / state.bias)
    if opts.beta > 0:
        logits += np.float32(opts.beta) * neighbours.sums(state.probs)
    if log_prior is not None:
        logits += log_prior
    return softmax_classes(logits)


def _update_bias(model: BiasModel, region: Region, state: EMState) -> None:
    """Bias step: replace the field by a new estimate (kept unchanged when too few voxels are usable)."""
    update = estimate_bias(model, region, state.bias, state.classes)
    if update is not None:
        state.bias, state.coef = update


def gm_wm_cnr(classes: Classes) -> float:
    """GM/WM contrast-to-noise ratio of the classes: ``|mu_WM - mu_GM| / sqrt((var_GM + var_WM) / 2)``."""
    pooled = float(np.sqrt(0.5 * (classes.variances[1] + classes.variances[2])))
    return abs(float(classes.means[2] - classes.means[1])) / max(pooled, 1e-12)


def run_em(region: Region, state: EMState, log_prior: F32 | None, opts: MRFOptions) -> EMState:
    """EM to convergence; with ``bias_order=0`` the bias degree is chosen (module docstring, bias step)."""
    if not opts.bias or opts.bias_order != 0:
        state.order = opts.bias_order if opts.bias else 0
        return _run_em(region, state, log_prior, opts)
    linear = _run_em(region, state, log_prior, dataclasses.replace(opts, bias_order=1))
    linear.order = 1
    cubic = _run_em(region, dataclasses.replace(linear, history=list(linear.history)), log_prior,
                    dataclasses.replace(opts, bias_order=AUTO_HIGH_ORDER))  # fmt: skip
    cubic.order = AUTO_HIGH_ORDER
    selection = {1: gm_wm_cnr(linear.classes), AUTO_HIGH_ORDER: gm_wm_cnr(cubic.classes)}
    chosen = cubic if selection[AUTO_HIGH_ORDER] > (1.0 + AUTO_MIN_GAIN) * selection[1] else linear
    chosen.selection = selection
    return chosen


def _run_em(region: Region, state: EMState, log_prior: F32 | None, opts: MRFOptions) -> EMState:
    """Alternate bias, M- and mean-field E-steps until the posteriors settle (see the module docstring)."""
    neighbours = Neighbours(region, opts.neighbourhood)
    model = BiasModel.build(region, opts.bias_order) if opts.bias else None
    floor = 1e-4 * float(np.var(region.values, dtype=np.float64))
    for iteration in range(1, opts.max_iter + 1):
        if model is not None and (iteration - 1) % opts.bias_every == 0:
            _update_bias(model, region, state)
        state.classes = Classes.fit(region.values / state.bias, state.probs, floor, state.tied)
        new = _e_step(region, state, neighbours, log_prior, opts)
        change = float(np.mean(np.abs(new - state.probs), dtype=np.float64))
        state.probs, state.iterations = new, iteration
        state.history.append(change)
        if change < opts.tol:
            state.converged = True
            break
    state.classes = Classes.fit(region.values / state.bias, state.probs, floor, state.tied)
    return state


# --------------------------------------------------------------------------- priors


def crop_image(image: Image, region: Region, *, masked: bool = True) -> Image:
    """``image`` cut to the region's box (affine shifted), optionally zero outside the mask, float32."""
    array = np.asarray(image.array[region.box], dtype=np.float32)
    if masked:
        array = np.where(region.inside, array, np.float32(0.0))
    shift = np.eye(4)
    shift[:3, 3] = [s.start for s in region.box]
    return Image(np.ascontiguousarray(array), image.affine @ shift, dict(image.meta))


def mni_priors(image: Image, region: Region, registration: str) -> tuple[F32, dict[str, Any]]:
    """MNI152 tissue priors (3, N) in tissue order at the in-mask voxels, and facts for ``info``.

    ``registration="masks"``: :func:`~mriquant.segment._tissue.register_brain_masks` (any contrast,
    a few seconds); ``"ants"``: :func:`mriquant.preprocess.register.register_to_mni` (affine, Mattes
    MI against the T1 template: T1 scans only, 20-30 s on two cores).
    """
    start = time.perf_counter()
    crop = crop_image(image, region)
    if registration == "ants":
        from mriquant.preprocess.register import register_to_mni
        from mriquant.preprocess.template import mni_priors as template_priors

        transform = register_to_mni(crop, mask=_crop_mask(crop, region), kind="affine")
        templates = template_priors(resolution_mm=1.0)
        maps = {k.upper(): transform.apply(templates[k], direction="to_subject").array[region.inside]
                for k in ("gm", "wm")}
    else:
        from mriquant.segment._tissue import mask_registered_priors

        maps = mask_registered_priors(crop, region.inside)
    priors = _tissue_priors(maps["GM"], maps["WM"])
    return priors, {"priors": "mni", "registration": registration,
                    "prior_seconds": round(time.perf_counter() - start, 2)}


def _crop_mask(crop: Image, region: Region) -> LabelImage:
    return LabelImage(region.inside.astype(np.uint8), crop.affine.copy(), {"source": "brain mask"})


def _tissue_priors(gm: npt.NDArray[Any], wm: npt.NDArray[Any]) -> F32:
    """Floored, normalised (CSF, GM, WM) priors, shape (3, N), from GM and WM maps; CSF = 1 - GM - WM."""
    gm = np.clip(np.asarray(gm, dtype=np.float32), 0.0, 1.0)
    wm = np.clip(np.asarray(wm, dtype=np.float32), 0.0, 1.0)
    csf = np.clip(1.0 - gm - wm, 0.0, 1.0)
    priors = np.stack([csf, gm, wm], axis=0) + np.float32(PRIOR_FLOOR)
    priors /= priors.sum(axis=0, keepdims=True)
    return np.asarray(priors, dtype=np.float32)


# --------------------------------------------------------------------------- initialisation


def _initial_classes(region: Region, image: Image, opts: MRFOptions, priors: F32 | None) -> tuple[Classes, str]:
    """k-means classes mapped to tissues (by contrast, or by overlap with the priors for ``auto``)."""
    km = kmeans_1d(Histogram.of(region.values), 3)
    if opts.contrast == "auto" and priors is not None:
        perm, contrast = _order_by_priors(region.values, km.centres, priors), "auto (priors)"
    else:
        contrast = resolve_contrast(opts.contrast, image, km.weights / km.weights.sum())
        perm = CONTRAST_ORDER[contrast]
    means, variances = np.zeros(3), np.zeros(3)
    pooled = max(km.pooled_variance, 1e-12)
    for sorted_class, tissue in enumerate(perm):
        means[tissue] = km.centres[sorted_class]
        variances[tissue] = km.variances[sorted_class] if km.variances[sorted_class] > 0 else pooled
    return Classes(means, variances), contrast


def _order_by_priors(values: F32, centres: F64, priors: F32) -> tuple[int, int, int]:
    """Tissue of each sorted k-means class: the permutation maximising mean prior agreement."""
    bounds = 0.5 * (centres[:-1] + centres[1:])
    labels = np.searchsorted(bounds, values)
    agreement = np.zeros((3, 3))
    for c in range(3):
        hit = labels == c
        if np.any(hit):
            agreement[c] = priors[:, hit].mean(axis=1)
    best = max(itertools.permutations(range(3)), key=lambda p: sum(agreement[c, p[c]] for c in range(3)))
    return best[0], best[1], best[2]


# --------------------------------------------------------------------------- partial volume


def _local_mean(region: Region, probs: F32) -> F32:
    """Mean posterior over each voxel's in-mask 3x3x3 neighbourhood (centre included), (3, N)."""
    count = box_sum(region.inside.astype(np.float32))[region.inside] + np.float32(1.0)
    out = np.empty_like(probs)
    buffer = np.zeros(region.inside.shape, dtype=np.float32)
    for k in range(probs.shape[0]):
        buffer[region.inside] = probs[k]
        out[k] = (box_sum(buffer)[region.inside] + probs[k]) / count
    return out


def _mixel_density(y: F32, mu_a: float, mu_b: float, s: float) -> F32:
    """Density of ``f mu_b + (1 - f) mu_a + N(0, s^2)`` with ``f ~ U(0, 1)``, at ``y``."""
    lo, hi = (mu_a, mu_b) if mu_a < mu_b else (mu_b, mu_a)
    density = (special.ndtr((y - lo) / s) - special.ndtr((y - hi) / s)) / (hi - lo)
    return np.asarray(density, dtype=np.float32)


def partial_volumes(region: Region, corrected: F32, probs: F32, classes: Classes) -> F32:
    """Partial-volume fractions (3, N) in tissue order from a pure/mixel model (module docstring)."""
    order = np.argsort(classes.means)
    pairs = [(int(order[0]), int(order[1])), (int(order[1]), int(order[2]))]
    local = _local_mean(region, probs)
    mix_prior = [np.float32(4.0) * local[a] * local[b] for a, b in pairs]
    pure_scale = np.float32(1.0) - np.clip(mix_prior[0] + mix_prior[1], 0.0, 1.0)
    sd = np.sqrt(classes.variances)
    joint = [probs[k] * pure_scale * _normal_pdf(corrected, float(classes.means[k]), float(sd[k])) for k in range(3)]
    fractions = []
    for (a, b), prior in zip(pairs, mix_prior, strict=True):
        mu_a, mu_b = float(classes.means[a]), float(classes.means[b])
        s = float(np.sqrt(0.5 * (classes.variances[a] + classes.variances[b])))
        joint.append(prior * _mixel_density(corrected, mu_a, mu_b, s))
        fractions.append(np.clip((corrected - np.float32(mu_a)) / np.float32(mu_b - mu_a), 0.0, 1.0))
    total = joint[0] + joint[1] + joint[2] + joint[3] + joint[4]
    usable = total > np.float32(1e-30)
    total = np.where(usable, total, np.float32(1.0))
    pve = np.stack([joint[k] / total for k in range(3)], axis=0)
    for (a, b), j, frac in zip(pairs, joint[3:], fractions, strict=True):
        share = j / total
        pve[a] += share * (np.float32(1.0) - frac)
        pve[b] += share * frac
    pve = np.where(usable[None, :], pve, probs)  # intensities far from every class: fall back to the posteriors
    pve /= pve.sum(axis=0, keepdims=True)
    return np.asarray(pve, dtype=np.float32)


def _normal_pdf(y: F32, mu: float, sd: float) -> F32:
    z = (y - np.float32(mu)) / np.float32(sd)
    return np.asarray(np.exp(np.float32(-0.5) * z * z) / np.float32(sd * np.sqrt(2.0 * np.pi)), np.float32)


# --------------------------------------------------------------------------- segmenter


def _initial_state(region: Region, classes: Classes, log_prior: F32 | None, variance: str) -> EMState:
    """Posteriors of the initial classes; ``tied`` resolved from ``variance`` (auto: tied in T1 order)."""
    t1_order = bool(classes.means[0] < classes.means[1] < classes.means[2])
    tied = variance == "tied" or (variance == "auto" and t1_order)
    if tied:
        classes = Classes(classes.means, np.full(3, float(classes.variances.mean())))
    logits = classes.logits(region.values)
    if log_prior is not None:
        logits += log_prior
    return EMState(softmax_classes(logits), classes, np.ones(region.n, dtype=np.float32), tied=tied)


@register
class MRFSegmenter(Segmenter):
    """HMRF-EM (FAST/Atropos class): Gaussian classes, Potts MRF, MNI priors, bias field, partial volume."""

    name = "mrf"
    kind = "tissue"
    description = "HMRF-EM with Potts prior, MNI152 tissue priors, bias re-estimation and partial volumes"
    reference = "Zhang, Brady, Smith 2001, IEEE TMI 20:45 (FAST); Avants et al. 2011, Neuroinformatics 9:381"
    options_type = MRFOptions

    def run(self, image: Image, mask: LabelImage | None) -> Segmentation:
        """Segment with HMRF-EM; outputs tissue map, posteriors, ``pve_*`` and ``bias_field``."""
        opts: MRFOptions = self.options
        region = Region.from_inputs(image, mask)
        info: dict[str, Any] = {"method": self.name, "priors": "none"}
        priors = None
        if opts.priors == "mni" and (opts.prior_weight > 0 or opts.contrast == "auto"):
            priors, prior_info = mni_priors(image, region, opts.registration)
            info.update(prior_info)
        return hmrf_em(image, region, priors, opts, info)


def hmrf_em(image: Image, region: Region, priors: F32 | None, opts: MRFOptions, info: dict[str, Any]) -> Segmentation:
    """HMRF-EM of ``region`` with the given spatial priors; the tissue segmentation on ``image``'s grid.

    Parameters
    ----------
    image : Image
        The scan (supplies the grid and the bias-field image).
    region : Region
        The in-mask voxels.
    priors : numpy.ndarray of float32, shape (3, N), or None
        Tissue priors (CSF, GM, WM) at the region's voxels, floored and summing to 1 (MNI152 ones, or another
        model's posteriors, as ``deep`` passes them); None for none.
    opts : MRFOptions
        ``opts.priors`` is not read: ``priors`` is used as given.
    info : dict
        Facts gathered so far; the EM's are added.

    Returns
    -------
    Segmentation
        Tissue map, posteriors, ``pve_*`` and ``bias_field``.
    """
    classes, info["contrast"] = _initial_classes(region, image, opts, priors)
    log_prior = None if priors is None or opts.prior_weight == 0 else np.float32(opts.prior_weight) * np.log(priors)
    state = run_em(region, _initial_state(region, classes, log_prior, opts.variance), log_prior, opts)
    corrected = region.values / state.bias
    pve = partial_volumes(region, corrected, state.probs, state.classes)
    extras: dict[str, npt.NDArray[Any]] = {f"pve_{name}": pve[k] for k, name in enumerate(TISSUES)}
    if state.coef is not None:
        model = BiasModel.build(region, state.order)
        extras["bias_field"] = bias_image(model, state.coef, image, region)
    info.update(_em_info(state, corrected))
    return assemble(image, region, np.ascontiguousarray(state.probs.T), info, extras)


def _em_info(state: EMState, corrected: F32) -> dict[str, Any]:
    return {
        "iterations": state.iterations,
        "variance": "tied" if state.tied else "class",
        "converged": state.converged,
        "final_change": state.history[-1] if state.history else None,
        "class_means": dict(zip(TISSUES, state.classes.means.tolist(), strict=True)),
        "class_sd": dict(zip(TISSUES, np.sqrt(state.classes.variances).tolist(), strict=True)),
        "means": class_means(corrected, np.ascontiguousarray(state.probs.T)),
        "bias_range": [float(state.bias.min()), float(state.bias.max())],
        "bias_order": state.order,
        "bias_order_cnr": {str(k): round(v, 4) for k, v in state.selection.items()},
    }
