"""Step events: how the library tells a display which step starts and ends (the library never prints).

Every :meth:`Case.step <mriquant.core.case.Case.step>` block emits a :class:`StepEvent` when it starts
and when it ends (done or failed), as an INFO record of the logger ``mriquant.progress`` whose
``step_event`` attribute holds the event. Nothing is emitted unless that logger is enabled for INFO,
and no handler is attached here: the command line attaches its display (:mod:`mriquant.cli_progress`),
a library user may attach any :class:`logging.Handler`.

Examples
--------
>>> import logging
>>> class Seen(logging.Handler):
...     def emit(self, record):
...         print(record.step_event.describe())
>>> logger = logging.getLogger("mriquant.progress")
>>> logger.addHandler(Seen()); logger.setLevel(logging.INFO)  # doctest: +SKIP
>>> with case.step("n4"):  # doctest: +SKIP
...     pass
n4 started
n4 done (0.0 s)

"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Literal

#: The logger the step events go through.
logger = logging.getLogger("mriquant.progress")

Status = Literal["started", "done", "failed"]

#: Prefix of the step names emitted in this context (e.g. ``"followup "``), see :func:`scope`.
_prefix: ContextVar[str] = ContextVar("mriquant_progress_prefix", default="")


@dataclass(frozen=True)
class StepEvent:
    """A step started or ended.

    Attributes
    ----------
    name : str
        Step name as the manifest records it, e.g. ``"n4"``, ``"segment:deep"``, ``"followup n4"``.
    status : {"started", "done", "failed"}
        What happened.
    seconds : float or None
        Wall-clock duration of the step (None when it starts).

    """

    name: str
    status: Status
    seconds: float | None = None

    def describe(self) -> str:
        """One line for a log: ``"n4 started"``, ``"n4 done (23.8 s)"``, ``"n4 failed (3.1 s)"``."""
        return self.name + (f" {self.status}" if self.seconds is None else f" {self.status} ({self.seconds:.1f} s)")


def emit(name: str, status: Status, seconds: float | None = None) -> None:
    """Emit a :class:`StepEvent` for step ``name`` (prefixed by the enclosing :func:`scope`)."""
    if logger.isEnabledFor(logging.INFO):
        event = StepEvent(_prefix.get() + name, status, seconds)
        logger.info("%s", event.describe(), extra={"step_event": event})


@contextmanager
def scope(prefix: str) -> Iterator[None]:
    """Prefix the names of the steps emitted inside the block with ``prefix`` and a space.

    ``longitudinal`` runs the follow-up scan's steps under ``scope("followup")``, the names its
    manifest gives them.
    """
    token = _prefix.set(f"{_prefix.get()}{prefix} ")
    try:
        yield
    finally:
        _prefix.reset(token)
