"""Compose the processing steps from a config dataclass and write their outputs.

Each step is a ``Case -> Case`` function from :mod:`mriquant.preprocess`; this module
only decides the order, passes the options and writes the files of the public
contract into an output folder.

Order matters: N4 runs before skull stripping (the network sees a flatter image and
the rough N4 mask only needs the head), registration runs on the corrected brain,
and normalisation runs last so it is computed inside the final brain mask.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields, is_dataclass, replace
from pathlib import Path
from typing import Any, Literal

from mriquant.core import outputs as out
from mriquant.core.case import Case, Step, record_step
from mriquant.core.errors import InputError
from mriquant.core.step import CaseStep, NoOptions, run_steps
from mriquant.io import MIN_ANALYSIS_VOXELS, read_image, write_image
from mriquant.io.transform_files import write_transform

Kind = Literal["rigid", "affine", "syn"]
#: Preprocessing steps in the order they run.
PREPROCESS_STEPS = ("denoise", "n4", "skullstrip", "register", "normalize")
DEFAULT_STEPS = ("n4", "skullstrip", "register")


@dataclass(frozen=True)
class PreprocessConfig:
    """Options of ``mriquant preprocess`` (and of the preprocessing part of ``run``).

    Attributes
    ----------
    steps : tuple of str
        Steps to run, a subset of :data:`PREPROCESS_STEPS`; run in that tuple's order.
    registration : str
        ``"rigid"``, ``"affine"`` or ``"syn"`` (deformable).
    normalize : str
        ``"wm-peak"``, ``"zscore"`` or ``"nyul"`` (used when ``"normalize"`` is a step).
    save_bias_field : bool
        Also write ``bias_field.nii.gz``.
    skullstripped : bool
        The input is already skull-stripped: the brain mask is its non-zero region.

    """

    steps: tuple[str, ...] = DEFAULT_STEPS
    registration: Kind = "affine"
    normalize: Literal["wm-peak", "zscore", "nyul"] = "wm-peak"
    save_bias_field: bool = False
    skullstripped: bool = False

    def __post_init__(self) -> None:
        unknown = [s for s in self.steps if s not in PREPROCESS_STEPS]
        if unknown:
            raise InputError(
                f"Expected steps from {', '.join(PREPROCESS_STEPS)}, found {', '.join(unknown)}; fix --steps."
            )

    def as_dict(self) -> dict[str, Any]:
        """Return the options as a JSON-serialisable dictionary."""
        return asdict(self)


def read_case(
    path: Path, *, volume: int | None = None, series: str | None = None, min_voxels: int = MIN_ANALYSIS_VOXELS
) -> Case:
    """Read a scan into a new :class:`Case` whose provenance starts with the step ``"read"``.

    Parameters are those of :func:`mriquant.io.read_image`.
    """
    steps: list[Step] = []
    params = {"input": Path(path).name, "volume": volume, "series": series}
    with record_step(steps, "read", params) as recorded:
        image = read_image(path, volume=volume, series=series, min_voxels=min_voxels)
        recorded.update(format=image.meta.get("format"), shape=list(image.shape))
    return Case(image, provenance=steps)


class StrippedMaskStep(CaseStep[NoOptions]):
    """Case step ``"skullstrip"`` for inputs the user declares skull-stripped: the brain mask is the non-zero region.

    The largest connected region of non-zero voxels, with enclosed holes filled, becomes ``labels["brain_mask"]``.

    Raises
    ------
    InputError
        If the input has no non-zero region of at least 100 mL (not a skull-stripped brain).
    """

    name = "skullstrip"

    def params(self) -> dict[str, Any]:
        """The rule."""
        return {"assumed_stripped": True, "rule": "largest non-zero region, holes filled"}

    def apply(self, case: Case, record: dict[str, Any]) -> None:
        """Take the non-zero region."""
        import numpy as np
        from scipy import ndimage

        from mriquant.core.image import LabelImage

        regions, n = ndimage.label(case.image.array != 0)
        sizes = np.bincount(regions.ravel())[1:] if n else np.zeros(0, np.int64)
        volume = float(sizes.max()) * case.image.voxel_volume_ml if n else 0.0
        if volume < 100.0:
            raise InputError(
                f"Expected a skull-stripped brain (a non-zero region of at least 100 mL), found {volume:.0f} mL; "
                "drop --skullstripped to strip the skull."
            )
        mask = ndimage.binary_fill_holes(regions == int(np.argmax(sizes)) + 1)
        record["brain_ml"] = round(float(mask.sum()) * case.image.voxel_volume_ml, 2)
        brain = LabelImage(mask.astype(np.uint8), case.image.affine.copy(), {"source": "brain_mask"})
        case.labels["brain_mask"] = brain


def nonzero_mask_step(case: Case) -> Case:
    """``StrippedMaskStep()(case)``."""
    return StrippedMaskStep()(case)


def _ordered(steps: tuple[str, ...]) -> list[str]:
    return [s for s in PREPROCESS_STEPS if s in steps]


def preprocess_steps(config: PreprocessConfig) -> list[CaseStep[Any]]:
    """The steps of ``config``, in :data:`PREPROCESS_STEPS` order.

    With ``skullstripped`` the declared brain (the non-zero region) replaces skull stripping and comes first,
    so N4 fits inside it.
    """
    from mriquant.preprocess.bias import N4Step, N4StepOptions
    from mriquant.preprocess.denoise import DenoiseStep
    from mriquant.preprocess.normalize import NormalizeOptions, NormalizeStep
    from mriquant.preprocess.register import RegisterOptions, RegisterStep
    from mriquant.preprocess.skullstrip import SkullStripStep

    names = _ordered(config.steps)
    steps: list[CaseStep[Any]] = []
    if config.skullstripped and "skullstrip" in names:
        names.remove("skullstrip")
        steps.append(StrippedMaskStep())
    by_name: dict[str, CaseStep[Any]] = {
        "denoise": DenoiseStep(),
        "n4": N4Step(N4StepOptions(save_field=config.save_bias_field)),
        "skullstrip": SkullStripStep(),
        "register": RegisterStep(RegisterOptions(kind=config.registration)),
        "normalize": NormalizeStep(NormalizeOptions(method=config.normalize)),
    }
    return steps + [by_name[name] for name in names]


def preprocess(case: Case, config: PreprocessConfig) -> Case:
    """Run the configured preprocessing steps on ``case``.

    Returns
    -------
    Case
        With ``images["preproc"]`` (bias-corrected, native grid), ``labels["brain_mask"]``
        and ``transforms["to_mni"]`` as the steps provide them.

    """
    return run_steps(case, preprocess_steps(config))


def write_preprocess_outputs(case: Case, folder: Path) -> list[str]:
    """Write the preprocessing outputs of ``case`` into ``folder``; return the file names.

    Files: ``preproc.nii.gz`` (bias-corrected, or the input when N4 did not run),
    ``brain_mask.nii.gz``, ``to_mni.*``, and ``bias_field.nii.gz`` / ``normalized.nii.gz``
    when those steps produced them. All images lie on the input's native grid. Records the step
    ``"write"`` on ``case``.
    """
    with case.step("write") as recorded:
        written = []
        write_image(case.images.get("preproc", case.image), folder / out.PREPROC)
        written.append(out.PREPROC)
        extras = {
            "brain_mask": case.labels.get("brain_mask"),
            "bias_field": case.images.get("bias_field"),
            "normalized": case.images.get("normalized"),
        }
        for name, image in extras.items():
            if image is not None:
                write_image(image, folder / out.image_file(name))
                written.append(out.image_file(name))
        transform = case.transforms.get("to_mni")
        if transform is not None:
            written += [p.name for p in write_transform(transform, folder, stem=out.TO_MNI)]
        recorded["files"] = written
    return written


def registration_for(segmenters: list[Any]) -> Kind | None:
    """The one place that decides the registration: the strongest any segmenter needs, or None.

    A segmenter says what it needs (``needs_registration``, ``registration_kind``); SyN serves an affine
    need too, an affine a rigid one. The pipeline registers once and hands the transform to every segmenter.
    """
    kinds = {str(s.registration_kind) for s in segmenters if s.needs_registration}
    order: tuple[Kind, ...] = ("syn", "affine", "rigid")
    return next((kind for kind in order if kind in kinds), None)


def segmentation_preprocess_steps(*, skullstripped: bool, registration: Kind | None) -> list[CaseStep[Any]]:
    """N4 and skull stripping (or the declared brain), then ``registration`` to MNI152 unless it is None."""
    steps: tuple[str, ...] = ("n4", "skullstrip") + (("register",) if registration else ())
    return preprocess_steps(
        PreprocessConfig(steps=steps, skullstripped=skullstripped, registration=registration or "affine")
    )


def prepare_for_segmentation(case: Case, *, skullstripped: bool, registration: Kind | None) -> Case:
    """Preprocess ``case`` as segmenters need it (:func:`segmentation_preprocess_steps`)."""
    return run_steps(case, segmentation_preprocess_steps(skullstripped=skullstripped, registration=registration))


def write_segment_outputs(case: Case, folder: Path, *, maps: bool = True) -> list[str]:
    """Write ``tissue.nii.gz`` / ``dseg.nii.gz``, ``brain_mask.nii.gz`` and (``maps``) ``prob_*.nii.gz``.

    Returns the file names written; every image is on the input's native grid. ``maps=False`` skips the
    probability, partial-volume and bias-field maps. Records the step ``"write"`` on ``case``.
    """
    with case.step("write") as recorded:
        recorded["files"] = _write_label_maps(case, folder, maps=maps)
    return list(recorded["files"])


def _write_label_maps(case: Case, folder: Path, *, maps: bool) -> list[str]:
    written = []
    for key in ("tissue", "dseg", "brain_mask"):
        if key in case.labels:
            write_image(case.labels[key], folder / out.image_file(key))
            written.append(out.image_file(key))
    for key, image in case.images.items() if maps else ():
        if key.startswith(("prob_", "pve_")) or key in ("bias_field",):
            write_image(image, folder / out.image_file(key))
            written.append(out.image_file(key))
    return written


# ----------------------------------------------------------------------------------------------------------------------
# the full pipeline (``mriquant run``)

#: Default method of ``run``: the dual-task network, tissues and structures in one pass. It replaced ``mrf`` +
#: ``atlas`` when it beat them on bench/deep.py (held-out MICCAI structures and tissues, BrainWeb T1/T2/PD
#: tissues) in a fraction of their time (an affine registration instead of SyN).
DEFAULT_METHOD = "deep"
#: The classical pair: a tissue method given alone gets these structures, a structure method these tissues.
CLASSICAL_TISSUE_METHOD = "mrf"
CLASSICAL_STRUCTURE_METHOD = "atlas"


@dataclass(frozen=True)
class RunConfig:
    """Options of ``mriquant run``.

    Attributes
    ----------
    tissue_method, structure_method : str or None
        Segmenters for ``tissue.nii.gz`` and ``dseg.nii.gz`` (None skips that output); a dual method
        (``deep``) as ``tissue_method`` gives both.
    tissue_options, structure_options : object, optional
        Their options dataclasses (defaults when None).
    skullstripped : bool
        The input is already skull-stripped.
    structures : bool
        Keep the structures (False drops a dual method's ``dseg``, as ``--no-structures`` asks).
    """

    tissue_method: str | None = DEFAULT_METHOD
    structure_method: str | None = None
    tissue_options: Any = None
    structure_options: Any = None
    skullstripped: bool = False
    structures: bool = True

    @classmethod
    def classical(cls, *, skullstripped: bool = False, structures: bool = True) -> RunConfig:
        """``mrf`` tissues and (unless ``structures`` is False) ``atlas`` structures, no network."""
        return cls(tissue_method=CLASSICAL_TISSUE_METHOD,
                   structure_method=CLASSICAL_STRUCTURE_METHOD if structures else None,
                   skullstripped=skullstripped, structures=structures)  # fmt: skip

    def without_structures(self) -> RunConfig:
        """The same tissues, no ``dseg.nii.gz``; a dual method is told not to compute its structures."""
        from mriquant.segment import get_segmenter

        options = self.tissue_options
        if self.tissue_method is not None:
            options_type = get_segmenter(self.tissue_method).options_type
            if is_dataclass(options_type) and "structures" in {f.name for f in fields(options_type)}:
                options = replace(options if options is not None else options_type(), structures=False)
        return replace(self, structure_method=None, tissue_options=options, structures=False)

    @classmethod
    def for_method(cls, method: str | None, options: Any = None, *, skullstripped: bool = False) -> RunConfig:
        """The config of ``run --method``.

        No method: the default (:data:`DEFAULT_METHOD`); a dual method: alone; a tissue (structure) method:
        paired with the classical structure (tissue) method.
        """
        from mriquant.segment import get_segmenter

        if method is None:
            return cls(skullstripped=skullstripped)
        kind = get_segmenter(method).kind
        if kind == "tissue":
            return cls(tissue_method=method, tissue_options=options, structure_method=CLASSICAL_STRUCTURE_METHOD,
                       skullstripped=skullstripped)  # fmt: skip
        if kind == "structure":
            return cls(tissue_method=CLASSICAL_TISSUE_METHOD, structure_method=method, structure_options=options,
                       skullstripped=skullstripped)  # fmt: skip
        if kind == "dual":
            return cls(tissue_method=method, tissue_options=options, structure_method=None, skullstripped=skullstripped)
        raise InputError(
            f"Expected a tissue or structure method for run, found {method!r} ({kind}); "
            f"use `mriquant segment --method {method}` for single regions."
        )

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready form (options as dictionaries)."""
        def options(value: Any) -> Any:
            return asdict(value) if value is not None else None

        return {"tissue_method": self.tissue_method, "structure_method": self.structure_method,
                "tissue_options": options(self.tissue_options), "structure_options": options(self.structure_options),
                "skullstripped": self.skullstripped, "structures": self.structures}  # fmt: skip


def _segmenters(config: RunConfig) -> list[Any]:
    from mriquant.segment import get_segmenter

    out = []
    for name, options in ((config.tissue_method, config.tissue_options),
                          (config.structure_method, config.structure_options)):  # fmt: skip
        if name is not None:
            out.append(get_segmenter(name)(options))
    return out


def pipeline_steps(config: RunConfig) -> list[CaseStep[Any]]:
    """The processing steps of ``mriquant run``: preprocessing, one step per segmenter, then reconciliation."""
    from mriquant.segment.base import SegmentStep
    from mriquant.segment.reconcile import ReconcileStep

    if not config.structures:  # also when RunConfig(structures=False) was built directly
        config = config.without_structures()
    segmenters = _segmenters(config)
    steps = segmentation_preprocess_steps(skullstripped=config.skullstripped, registration=registration_for(segmenters))
    steps += [SegmentStep(segmenter) for segmenter in segmenters]
    if config.structures:
        steps.append(ReconcileStep())  # tissues and structures must tell one story
    return steps


def run_pipeline(case: Case, config: RunConfig) -> Case:
    """Preprocess, then segment tissues and structures: the processing part of ``mriquant run``.

    Each step announces its start and end (:mod:`mriquant.core.progress`) and is recorded on the case.
    """
    case = run_steps(case, pipeline_steps(config))
    if not config.structures:
        case.labels.pop("dseg", None)
    return case


class QuantifyStep(CaseStep[NoOptions]):
    """Case step ``"quantify"``: shape, QC and volumes into ``case.measurements["volumes"]`` (:func:`quantify_case`)."""

    name = "quantify"

    def apply(self, case: Case, record: dict[str, Any]) -> None:
        """Measure the case."""
        case.measurements["volumes"] = quantify_case(case)


def quantify_case(case: Case) -> dict[str, Any]:
    """Shape, QC and volumes of a segmented case: the ``volumes.json`` document."""
    from mriquant.core.labels import freesurfer
    from mriquant.quantify.measure import measure
    from mriquant.quantify.qc import quality_control
    from mriquant.quantify.shape import structure_shapes

    dseg = case.labels.get("dseg")
    shapes = structure_shapes(dseg, table=freesurfer()) if dseg is not None else None
    transform = case.transforms.get("to_mni")
    quality = transform.meta.get("quality") if transform is not None else None
    probabilities = case.tissue_probabilities()
    qc = quality_control(
        case.image,
        brain_mask=case.labels.get("brain_mask"),
        tissue=case.labels.get("tissue"),
        dseg=dseg,
        probabilities=probabilities or None,
        registration=quality,
        shapes=shapes,
    )
    return measure(case, qc=qc, shapes=shapes)


def write_run_outputs(
    case: Case,
    folder: Path,
    volumes: dict[str, Any] | None = None,
    *,
    manifest: dict[str, Any],
    source: Path,
    maps: bool = False,
) -> list[str]:
    """Write every output of ``run`` except ``manifest.json``; return the names written.

    ``volumes`` is the case's ``measurements["volumes"]`` (from :class:`QuantifyStep`); when given, it is
    stored there first.

    Label images (native grid; with ``maps`` also the tissue probability / partial-volume maps),
    ``volumes.json``, ``volumes.csv`` (step ``"write"``), ``report.html`` / ``report.pdf`` (step ``"report"``),
    and for DICOM input ``seg.dcm``, ``sr.dcm`` and ``report_pdf.dcm`` (same study as the source; step
    ``"export:dicom"``). The steps are recorded on ``case``.
    """
    from mriquant.core.labels import freesurfer
    from mriquant.io import write_json
    from mriquant.io.write import atomic_path
    from mriquant.quantify.measure import volumes_csv
    from mriquant.report import report_case

    if volumes is not None:
        case.measurements["volumes"] = volumes
    volumes = case.measurements["volumes"]
    with case.step("write") as recorded:
        files = _write_label_maps(case, folder, maps=maps)
        write_json(volumes, folder / out.VOLUMES_JSON)
        with atomic_path(folder / out.VOLUMES_CSV) as tmp:
            tmp.write_text(volumes_csv(volumes))
        recorded["files"] = [*files, out.VOLUMES_JSON, out.VOLUMES_CSV]
    written = list(recorded["files"])
    with case.step("report") as recorded:
        recorded["files"] = report_case(folder, case, manifest=manifest)
    written += recorded["files"]
    if case.image.meta.get("format") == "dicom" and "dseg" in case.labels:
        from mriquant.export import export_dicom

        with case.step("export:dicom") as recorded:
            recorded["files"] = export_dicom(
                folder, source=source, image=case.image, dseg=case.labels["dseg"], volumes=volumes,
                table=freesurfer(), pdf=folder / out.REPORT_PDF,
            )  # fmt: skip
        written += recorded["files"]
    return written
