"""Make the structure map and the tissue map tell one story.

Tissues (CSF, GM, WM) and structures come from two models: a dual network's two heads refined by two
intensity models, or two classical methods. Left alone they disagree where it matters most to a
reader: the network learnt its cortex labels from MICCAI 2012 manual labels that run over the sulci,
so on the demo T1 the left cortex label held 65 mL of what the tissue map calls CSF and 22 mL of WM
(389 mL of "cortex", above the adult range), the structures summed to 1514 mL of parenchyma against
1373 mL of GM + WM, and the pallidum was white matter in the tissue map and grey in the structure map.

:func:`reconcile` settles each disagreement by one rule, always the same way (what each structure
measures is its tissue class, :data:`mriquant.core.labels.STRUCTURE_TISSUE`):

1. A voxel of a grey- or white-matter structure that the tissue map calls CSF is not that structure:
   it becomes unlabelled (0), like the rest of the CSF outside the ventricles (sulcal CSF lies outside
   the pial surface; FreeSurfer's aseg leaves it unlabelled too).
2. A cortex voxel (cerebral or cerebellar) that the tissue map calls WM becomes the white matter of the
   same hemisphere and compartment.
3. A white-matter voxel that the tissue map calls GM becomes the cortex of its hemisphere when its
   connected piece of such voxels touches that cortex (the grey/white border). Pieces deep in the
   white matter stay white matter: they are white-matter hypointensities (lesions), not cortex.
4. Inside a subcortical nucleus (thalamus, caudate, putamen, pallidum, hippocampus, amygdala,
   accumbens, ventral diencephalon) the tissue map's WM becomes GM, and its WM probability moves to
   GM: anatomy, not T1 intensity, makes a nucleus grey matter (FreeSurfer counts them so).

Afterwards every cortex voxel is GM, every cerebral-WM voxel is WM or an isolated hypointensity, the
GM structures sum to at most the GM (the rest of the GM is in voxels no structure claims), and the
parenchyma of the structures equals GM + WM up to the CSF the tissue map finds inside the brain stem
and ventral diencephalon's own nuclei. How many mL each rule moved is recorded in the step.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt
from scipy import ndimage

from mriquant.core.case import Case
from mriquant.core.geometry import bounding_box
from mriquant.core.image import Image, LabelImage
from mriquant.core.labels import CORTEX_WHITE_MATTER, SUBCORTICAL_NUCLEI, TISSUES, structure_classes
from mriquant.core.step import CaseStep, NoOptions

__all__ = ["ReconcileStep", "Reconciled", "reconcile"]

CSF, GM, WM = (t.id for t in TISSUES)


@dataclass(frozen=True)
class Reconciled:
    """The two maps after :func:`reconcile`, and what each rule moved.

    Attributes
    ----------
    tissue, dseg : LabelImage
        The reconciled maps, on the input grids (same affines, same metadata).
    probabilities : dict of str to Image
        The tissue posteriors with rule 4 applied (``{"CSF": ..., "GM": ..., "WM": ...}``; empty when
        none were given).
    moved_ml : dict of str to float
        Volume (mL) changed by each rule: ``csf_unlabelled``, ``cortex_to_white_matter``,
        ``white_matter_to_cortex``, ``nuclei_wm_to_gm``.
    """

    tissue: LabelImage
    dseg: LabelImage
    probabilities: dict[str, Image] = field(default_factory=dict)
    moved_ml: dict[str, float] = field(default_factory=dict)


def _touching(candidates: npt.NDArray[np.bool_], target: npt.NDArray[np.bool_]) -> npt.NDArray[np.bool_]:
    """The 26-connected pieces of ``candidates`` that touch ``target`` (face, edge or corner).

    A piece touches the target exactly when it joins a target voxel's component of ``candidates |
    target``, so one labelling inside the pair's box answers it (no dilation).
    """
    out = np.zeros_like(candidates)
    if not candidates.any() or not target.any():
        return out
    box = bounding_box(candidates | target, margin=1)
    pieces, _ = ndimage.label(candidates[box] | target[box], structure=np.ones((3, 3, 3), bool))
    joined = np.zeros(int(pieces.max()) + 1, bool)
    joined[np.unique(pieces[target[box]])] = True
    out[box] = candidates[box] & joined[pieces]
    return out


def _relabel(
    tissue: npt.NDArray[np.integer[Any]], dseg: npt.NDArray[np.integer[Any]]
) -> tuple[npt.NDArray[Any], npt.NDArray[Any], dict[str, int]]:
    """Rules 1-4 on crisp arrays (copies); returns the new maps and the voxel count of each rule."""
    dseg, tissue = dseg.copy(), tissue.copy()
    counts: dict[str, int] = {}
    unlabel = (tissue == CSF) & (structure_classes(dseg) >= GM)
    dseg[unlabel] = 0
    counts["csf_unlabelled"] = int(unlabel.sum())
    counts["cortex_to_white_matter"] = counts["white_matter_to_cortex"] = 0
    for cortex, white in CORTEX_WHITE_MATTER.items():
        to_white = (dseg == cortex) & (tissue == WM)
        to_cortex = _touching((dseg == white) & (tissue == GM), dseg == cortex)
        dseg[to_white], dseg[to_cortex] = white, cortex
        counts["cortex_to_white_matter"] += int(to_white.sum())
        counts["white_matter_to_cortex"] += int(to_cortex.sum())
    nuclei_wm = np.isin(dseg, SUBCORTICAL_NUCLEI) & (tissue == WM)
    tissue[nuclei_wm] = GM
    counts["nuclei_wm_to_gm"] = int(nuclei_wm.sum())
    return tissue, dseg, counts


def _nuclei_probabilities(
    probabilities: dict[str, Image], nuclei: npt.NDArray[np.bool_], box: tuple[slice, ...]
) -> dict[str, Image]:
    """Rule 4 on the posteriors: inside the nuclei, P(WM) is added to P(GM) and set to 0."""
    if not {"GM", "WM"} <= probabilities.keys():
        return dict(probabilities)
    gm, wm = probabilities["GM"].array.copy(), probabilities["WM"].array.copy()
    inside = nuclei[box]
    gm[box][inside] += wm[box][inside]
    wm[box][inside] = 0.0
    return {**probabilities, "GM": probabilities["GM"].with_array(gm), "WM": probabilities["WM"].with_array(wm)}


def reconcile(tissue: LabelImage, dseg: LabelImage, probabilities: dict[str, Image] | None = None) -> Reconciled:
    """Apply the module's four rules so that structure volumes agree with the tissue classes.

    Parameters
    ----------
    tissue : LabelImage
        Tissue map (0 background, 1 CSF, 2 GM, 3 WM), shape ``(I, J, K)``.
    dseg : LabelImage
        FreeSurfer-id structure map on the same grid.
    probabilities : dict of str to Image, optional
        Tissue posteriors keyed ``"CSF"``, ``"GM"``, ``"WM"`` on the same grid.

    Returns
    -------
    Reconciled
        The new maps and posteriors (the inputs are not modified) and the mL each rule moved.

    Examples
    --------
    >>> out = reconcile(case.labels["tissue"], case.labels["dseg"])  # doctest: +SKIP
    >>> out.moved_ml["csf_unlabelled"]  # doctest: +SKIP
    129.6
    """
    if tissue.shape != dseg.shape or not np.allclose(tissue.affine, dseg.affine, atol=1e-4):
        from mriquant.core.errors import GeometryError

        raise GeometryError(
            f"Expected the tissue and structure maps on one grid, found shapes {tissue.shape} and {dseg.shape}; "
            "resample one onto the other first."
        )
    labelled = (tissue.array > 0) | (dseg.array > 0)
    if not labelled.any():
        return Reconciled(tissue=tissue, dseg=dseg, probabilities=dict(probabilities or {}))
    box = bounding_box(labelled, margin=1)
    new_tissue, new_dseg = tissue.array.copy(), dseg.array.copy()
    new_tissue[box], new_dseg[box], counts = _relabel(tissue.array[box], dseg.array[box])
    nuclei = np.isin(new_dseg, SUBCORTICAL_NUCLEI)
    voxel_ml = tissue.voxel_volume_ml
    return Reconciled(
        tissue=tissue.with_array(new_tissue),
        dseg=dseg.with_array(new_dseg),
        probabilities=_nuclei_probabilities(probabilities or {}, nuclei, box),
        moved_ml={key: round(n * voxel_ml, 3) for key, n in counts.items()},
    )


class ReconcileStep(CaseStep[NoOptions]):
    """Case step ``"reconcile"``: :func:`reconcile` the case's ``tissue`` and ``dseg``.

    A case without both maps is left as it is, and the step records why it was skipped.
    """

    name = "reconcile"

    def params(self) -> dict[str, Any]:
        """Where the rules are written."""
        return {"rules": "structures measure their tissue class (segment/reconcile.py)"}

    def apply(self, case: Case, record: dict[str, Any]) -> None:
        """Reconcile the maps and the tissue posteriors."""
        missing = [key for key in ("tissue", "dseg") if key not in case.labels]
        if missing:
            record["skipped"] = f"no {' and no '.join(missing)} map"
            return
        result = reconcile(case.labels["tissue"], case.labels["dseg"], case.tissue_probabilities())
        record["moved_ml"] = result.moved_ml
        case.labels["tissue"], case.labels["dseg"] = result.tissue, result.dseg
        case.images.update({f"prob_{name}": image for name, image in result.probabilities.items()})
