"""Test helpers: a synthetic head phantom with known truth, sampled on any grid.

Used by the test suite and the benchmarks; see :mod:`mriquant.testing.phantom`.
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
