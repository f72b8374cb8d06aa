"""Segmentation methods, one module each, all following :class:`~mriquant.segment.base.Segmenter`."""

from __future__ import annotations

from mriquant.segment.base import (
    BUILTIN_MODULES,
    Segmentation,
    Segmenter,
    get_segmenter,
    register,
    registry,
    segment_step,
)

__all__ = ["BUILTIN_MODULES", "Segmentation", "Segmenter", "get_segmenter", "register", "registry", "segment_step"]
