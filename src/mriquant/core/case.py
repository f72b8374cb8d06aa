"""The :class:`Case`: one subject's images, masks, transforms and provenance.

Every processing step takes a Case and returns a Case, appending a :class:`Step`
to its provenance. The provenance is what manifests and reports print, and what
lets outputs go back to the native grid.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from mriquant.core import progress
from mriquant.core.image import Image, LabelImage
from mriquant.core.labels import TISSUES


@dataclass(frozen=True)
class Step:
    """What one processing step did.

    Attributes
    ----------
    name : str
        Step name, e.g. ``"read"``, ``"n4"``, ``"skullstrip"``.
    params : dict
        Parameters the step used (JSON-serialisable).
    version : str
        Version of the code that ran the step.
    started : str
        ISO 8601 UTC start time.
    seconds : float
        Wall-clock duration in seconds.

    """

    name: str
    params: dict[str, Any]
    version: str
    started: str
    seconds: float

    def as_dict(self) -> dict[str, Any]:
        """Return the step as a JSON-serialisable dictionary."""
        return dataclasses.asdict(self)


@dataclass
class Case:
    """One subject's working state through the pipeline.

    Parameters
    ----------
    image : Image
        The input scan in its native grid (never modified by steps).
    images : dict of str to Image
        Derived intensity images, e.g. ``"preproc"``.
    labels : dict of str to LabelImage
        Masks and label maps, e.g. ``"brain_mask"``, ``"tissue"``, ``"dseg"``.
    transforms : dict of str to object
        Spatial transforms, e.g. ``"to_mni"``.
    provenance : list of Step
        What was done, in order.
    measurements : dict of str to object
        What the quantification measured, by name (``"volumes"``: the ``volumes.json`` document).

    """

    image: Image
    images: dict[str, Image] = field(default_factory=dict)
    labels: dict[str, LabelImage] = field(default_factory=dict)
    transforms: dict[str, Any] = field(default_factory=dict)
    provenance: list[Step] = field(default_factory=list)
    measurements: dict[str, Any] = field(default_factory=dict)

    def evolve(self, **changes: Any) -> Case:
        """Return a shallow copy with ``changes`` applied (arrays are shared, not copied)."""
        copy = dataclasses.replace(
            self,
            images=dict(self.images),
            labels=dict(self.labels),
            transforms=dict(self.transforms),
            provenance=list(self.provenance),
            measurements=dict(self.measurements),
        )
        for key, value in changes.items():
            setattr(copy, key, value)
        return copy

    def tissue_probabilities(self) -> dict[str, Image]:
        """The tissue posteriors a tissue method left on the case (``images["prob_CSF"]``, ...), keyed by name."""
        return {t.name: self.images[f"prob_{t.name}"] for t in TISSUES if f"prob_{t.name}" in self.images}

    @contextmanager
    def step(self, name: str, params: dict[str, Any] | None = None) -> Iterator[dict[str, Any]]:
        """Time a block and append a :class:`Step` for it to this case's provenance.

        The yielded dictionary holds the parameters; the block may add to it. The start and the end
        of the block are announced to any progress display (:mod:`mriquant.core.progress`).

        Examples
        --------
        >>> case = Case(Image(np.zeros((2, 2, 2), np.float32), np.eye(4)))  # doctest: +SKIP
        >>> with case.step("threshold", {"level": 3}):
        ...     pass

        """
        with record_step(self.provenance, name, params) as recorded:
            yield recorded


@contextmanager
def record_step(steps: list[Step], name: str, params: dict[str, Any] | None = None) -> Iterator[dict[str, Any]]:
    """Time a block and append a :class:`Step` for it to ``steps`` (:meth:`Case.step` without a case).

    Emits the step's start and its end (done, or failed when the block raises) as
    :class:`~mriquant.core.progress.StepEvent` s; a failed step is not appended.
    """
    from mriquant import __version__

    recorded: dict[str, Any] = dict(params or {})
    started = datetime.now(UTC).isoformat(timespec="seconds")
    t0 = time.perf_counter()
    progress.emit(name, "started")
    try:
        yield recorded
    except BaseException:
        progress.emit(name, "failed", time.perf_counter() - t0)
        raise
    steps.append(Step(name, recorded, __version__, started, round(time.perf_counter() - t0, 3)))
    progress.emit(name, "done", steps[-1].seconds)
