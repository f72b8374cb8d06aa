"""Cells of the report's tables: text, a colour swatch, a severity badge, or an undefined value with its reason."""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["Badge", "Cell", "Missing", "Swatch"]


@dataclass(frozen=True)
class Missing:
    """An undefined value and why it is undefined."""

    reason: str


@dataclass(frozen=True)
class Swatch:
    """Text preceded by a colour square (a label's display colour, 0-255 per channel)."""

    text: str
    rgb: tuple[int, int, int]

    @property
    def css(self) -> str:
        """The colour as ``#rrggbb``."""
        return "#{:02x}{:02x}{:02x}".format(*self.rgb)


@dataclass(frozen=True)
class Badge:
    """A QC severity shown as a coloured tag; ``level`` is ``"error"``, ``"warning"`` or ``"info"``."""

    text: str
    level: str


Cell = str | Missing | Swatch | Badge
