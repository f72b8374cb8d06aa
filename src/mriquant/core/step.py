"""The step protocol: every processing step is a name, frozen options and ``__call__(case) -> case``.

A step never modifies the case it is given: it works on a shallow copy (arrays shared, not copied) and
records itself (name, options, code version, seconds) in that copy's provenance, TorchIO-style, so the
manifest and the report list exactly what ran with which settings. The pipeline is a list of steps::

    case = read_case(path)
    for step in (N4Step(), SkullStripStep(), RegisterStep(RegisterOptions(kind="affine"))):
        case = step(case)

Adding a step means one class: a ``name``, an ``options_type`` (a frozen dataclass; :class:`NoOptions`
when there is nothing to set) and :meth:`CaseStep.apply`.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import asdict, dataclass, is_dataclass
from typing import Any, ClassVar, Generic, TypeVar

from mriquant.core.case import Case

__all__ = ["CaseStep", "NoOptions", "run_steps"]

OptionsT = TypeVar("OptionsT")


@dataclass(frozen=True)
class NoOptions:
    """Options of a step that has none."""


class CaseStep(ABC, Generic[OptionsT]):
    """One processing step (see the module docstring).

    Parameters
    ----------
    options : frozen dataclass, optional
        The step's settings; ``options_type()`` (the defaults) when omitted.

    Attributes
    ----------
    name : str
        The name recorded in the provenance (``"n4"``, ``"skullstrip"``, ``"segment:deep"``, ...).
    options_type : type
        The class of ``options``.
    """

    name: str
    options_type: ClassVar[type[Any]] = NoOptions

    def __init__(self, options: OptionsT | None = None) -> None:
        self.options: OptionsT = options if options is not None else self.options_type()

    def params(self) -> dict[str, Any]:
        """The options as recorded in the provenance (JSON-ready)."""
        return asdict(self.options) if is_dataclass(self.options) and not isinstance(self.options, type) else {}

    def __call__(self, case: Case) -> Case:
        """Run the step on a shallow copy of ``case`` and record it there; ``case`` is not modified."""
        out = case.evolve()
        with out.step(self.name, self.params()) as record:
            self.apply(out, record)
        return out

    @abstractmethod
    def apply(self, case: Case, record: dict[str, Any]) -> None:
        """Do the work on ``case`` (the step's own shallow copy) and add what it measured to ``record``."""

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.options!r})"


def run_steps(case: Case, steps: list[CaseStep[Any]]) -> Case:
    """Run ``steps`` in order on ``case``; returns the last step's case."""
    for step in steps:
        case = step(case)
    return case
