"""Test helpers: a synthetic head phantom with known truth, sampled on any grid, and test doubles.

Used by the test suite and the benchmarks; see :mod:`mriquant.testing.phantom` (with its spec in
:mod:`~mriquant.testing.phantom_spec` and anatomy in :mod:`~mriquant.testing.phantom_anatomy`) and
:mod:`mriquant.testing.transforms`. No production module imports this package (an import-linter contract in
``pyproject.toml``); MR simulation used by production code lives in :mod:`mriquant.simulate`.
"""

from mriquant.testing.phantom import (
    MEANS,
    ORIENTATION_CODES,
    Compartment,
    Phantom,
    PhantomError,
    PhantomSpec,
    make_phantom,
    write_phantom,
)

__all__ = [
    "MEANS",
    "ORIENTATION_CODES",
    "Compartment",
    "Phantom",
    "PhantomError",
    "PhantomSpec",
    "make_phantom",
    "write_phantom",
]
