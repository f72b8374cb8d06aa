"""The Segmenter contract every segmentation method follows.

A segmenter takes a scan in its native grid (and optionally a brain mask) and returns a
:class:`Segmentation` on that same grid: a tissue map (0 background, 1 CSF, 2 GM, 3 WM)
and/or a structure map (FreeSurfer ids), plus per-class probability or membership maps
that sum to 1 over the classes inside the mask. Methods register themselves with
:func:`register`, and the command line builds one ``--flag`` per field of a method's
options dataclass, so every parameter is documented in one place.

Examples
--------
>>> from mriquant.segment import get_segmenter  # doctest: +SKIP
>>> seg = get_segmenter("kmeans")().segment(image, mask)  # doctest: +SKIP
>>> seg.tissue.labels  # doctest: +SKIP
[1, 2, 3]
"""

from __future__ import annotations

import dataclasses
import importlib
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal

import numpy as np

from mriquant.core.case import Case
from mriquant.core.errors import InputError
from mriquant.core.image import Image, LabelImage
from mriquant.core.step import CaseStep

Kind = Literal["tissue", "structure", "region", "dual"]


@dataclass
class Segmentation:
    """What a segmenter returns, every image on the input's native grid.

    Attributes
    ----------
    tissue : LabelImage or None
        0 background, 1 CSF, 2 GM, 3 WM (tissue methods).
    dseg : LabelImage or None
        Structure or region labels with FreeSurfer ids (structure and region methods).
    probabilities : dict of str to Image
        Per-class probability or membership in [0, 1] keyed by class name
        (``"CSF"``, ``"GM"``, ``"WM"``, or a structure name); they sum to 1 over the
        classes inside the mask (and are 0 outside it).
    extras : dict of str to Image
        Method-specific maps (partial-volume fractions, bias field, level-set function, ...).
    info : dict
        JSON-serialisable facts about the run (iterations, convergence, class means, seeds).
    """

    tissue: LabelImage | None = None
    dseg: LabelImage | None = None
    probabilities: dict[str, Image] = field(default_factory=dict)
    extras: dict[str, Image] = field(default_factory=dict)
    info: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class NoOptions:
    """Options of a method that has none."""


class Segmenter(ABC):
    """Base class of every segmentation method.

    Subclasses set the class attributes and implement :meth:`run`. They must be
    deterministic for a given ``seed`` option (when they use randomness), keep outputs
    on the input's native grid, and raise :class:`~mriquant.core.errors.InputError`
    with a one-line message for unusable inputs.

    Attributes
    ----------
    name : str
        The ``--method`` name.
    kind : {"tissue", "structure", "region", "dual"}
        What it produces: tissue classes, anatomical structures, a single region, or tissues and
        structures in one pass (``dual``).
    description : str
        One line for ``mriquant info``.
    reference : str
        The method's reference (paper), one line.
    options_type : type
        A frozen dataclass of the parameters; each field becomes a CLI flag, with the
        field's ``metadata["help"]`` as its help text.
    """

    name: ClassVar[str]
    kind: ClassVar[Kind]
    description: ClassVar[str]
    reference: ClassVar[str]
    options_type: ClassVar[type[Any]] = NoOptions
    #: Whether the method uses a transform to MNI152 (``self.to_mni``); the pipeline then
    #: registers first and sets it, otherwise the method registers by itself when it needs to.
    needs_registration: ClassVar[bool] = False
    #: The registration the method needs when ``needs_registration`` ("rigid", "affine" or "syn").
    registration_kind: ClassVar[str] = "affine"

    def __init__(self, options: Any = None, *, to_mni: Any = None) -> None:
        self.to_mni = to_mni
        self.options = options if options is not None else self.options_type()
        if not isinstance(self.options, self.options_type):
            raise TypeError(f"{self.name} expects {self.options_type.__name__}, got {type(self.options).__name__}")

    def segment(self, image: Image, mask: LabelImage | None = None) -> Segmentation:
        """Segment ``image`` (restricted to ``mask`` when given); outputs on ``image``'s grid.

        Checks the contract around :meth:`run`: mask grid, output grids, label values.
        """
        if mask is not None and not mask.same_grid(image):
            raise InputError(
                f"Expected the mask on the image's grid {image.shape}, found {mask.shape}; resample the mask first."
            )
        if mask is not None and not np.any(mask.array):
            raise InputError("Expected a non-empty brain mask, found an empty one; check the skull stripping.")
        result = self.run(image, mask)
        for out in (result.tissue, result.dseg, *result.probabilities.values()):
            if out is not None and not out.same_grid(image):
                raise RuntimeError(f"{self.name} returned an output off the input grid")  # a bug, not bad input
        return result

    @abstractmethod
    def run(self, image: Image, mask: LabelImage | None) -> Segmentation:
        """Do the segmentation; called by :meth:`segment` after the input checks."""

    def params(self) -> dict[str, Any]:
        """The options as a JSON-serialisable dictionary (for provenance)."""
        opts = self.options
        return dataclasses.asdict(opts) if dataclasses.is_dataclass(opts) and not isinstance(opts, type) else {}


_REGISTRY: dict[str, type[Segmenter]] = {}

#: Modules of :mod:`mriquant.segment` that define the built-in methods (imported lazily: some pull in torch or ANTs).
BUILTIN_MODULES = (
    "threshold",
    "region_growing",
    "kmeans",
    "fcm",
    "gmm",
    "mrf",
    "atlas",
    "level_set",
    "deep",
)


def _load_builtin_methods() -> None:
    """Import every built-in method module that exists in this version."""
    for module in BUILTIN_MODULES:
        try:
            importlib.import_module(f"mriquant.segment.{module}")
        except ModuleNotFoundError as exc:
            if exc.name != f"mriquant.segment.{module}":
                raise


def register(cls: type[Segmenter]) -> type[Segmenter]:
    """Class decorator adding a segmenter to the registry under ``cls.name``."""
    if cls.name in _REGISTRY and _REGISTRY[cls.name] is not cls:
        raise ValueError(f"Segmenter name {cls.name!r} registered twice")
    _REGISTRY[cls.name] = cls
    return cls


def registry() -> dict[str, type[Segmenter]]:
    """Every registered segmenter by name (importing the built-in method modules first)."""
    _load_builtin_methods()
    return dict(_REGISTRY)


def get_segmenter(name: str) -> type[Segmenter]:
    """Return the segmenter class called ``name``.

    Raises
    ------
    InputError
        If no method has that name (the message lists the known ones).
    """
    methods = registry()
    if name not in methods:
        raise InputError(f"Expected a method from {', '.join(sorted(methods))}, found {name!r}; see `mriquant info`.")
    return methods[name]


class SegmentStep(CaseStep[Any]):
    """Case step ``"segment:<method>"``: run a segmenter on the preprocessed image inside the brain mask.

    Its options are the segmenter's own options dataclass. Sets ``labels["tissue"]`` and/or
    ``labels["dseg"]``, ``images["prob_<class>"]`` and ``images[<extra>]``, and records the method, its
    options and its info.
    """

    def __init__(self, segmenter: Segmenter, *, mask_key: str = "brain_mask") -> None:
        super().__init__(segmenter.options)
        self.segmenter, self.mask_key = segmenter, mask_key
        self.name = f"segment:{segmenter.name}"

    def params(self) -> dict[str, Any]:
        """The method and its options."""
        return {"method": self.segmenter.name, **self.segmenter.params()}

    def apply(self, case: Case, record: dict[str, Any]) -> None:
        """Segment and store the maps."""
        if self.segmenter.to_mni is None:
            self.segmenter.to_mni = case.transforms.get("to_mni")
        result = self.segmenter.segment(case.images.get("preproc", case.image), case.labels.get(self.mask_key))
        record["info"] = result.info
        if result.tissue is not None:
            case.labels["tissue"] = result.tissue
        if result.dseg is not None:
            case.labels["dseg"] = result.dseg
        case.images.update({f"prob_{k}": v for k, v in result.probabilities.items()})
        case.images.update(result.extras)


def segment_step(case: Case, segmenter: Segmenter, *, mask_key: str = "brain_mask") -> Case:
    """``SegmentStep(segmenter, mask_key=mask_key)(case)``."""
    return SegmentStep(segmenter, mask_key=mask_key)(case)
