"""Segmentation methods, one module each, all following :class:`~mriquant.segment.base.Segmenter`."""

from __future__ import annotations

import importlib

from mriquant.segment.base import Segmentation, Segmenter, get_segmenter, register, registry, segment_step

__all__ = ["Segmentation", "Segmenter", "get_segmenter", "register", "registry", "segment_step"]

#: Modules that define the built-in methods (imported lazily: some pull in torch or ANTs).
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
