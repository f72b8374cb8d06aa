"""One conformance suite every segmenter passes: same inputs, same output contract.

In the style of nibabel's ``test_image_api.py``: the checks are written once and run for
every method in the registry, so a new method is tested the moment it registers.
"""

from __future__ import annotations

import numpy as np
import pytest

from mriquant.core.errors import InputError
from mriquant.core.geometry import reorient
from mriquant.core.image import Image, LabelImage
from mriquant.core.labels import TISSUES, freesurfer
from mriquant.segment import Segmentation, Segmenter, registry
from mriquant.testing.phantom import ORIENTATION_CODES, Phantom, PhantomSpec, make_phantom
from mriquant.testing.transforms import WorldIdentity

METHODS = sorted(registry())
#: Methods too slow for 48 runs in CI get a sample of orientations (they register or run a network).
SLOW = {"atlas", "deep", "mrf", "gmm"}
ORIENTATION_SAMPLE = ("RAS", "LIA", "PSR", "ILP")


def _spec(orientation: str = "RAS") -> PhantomSpec:
    return PhantomSpec(spacing=(3.0, 3.0, 3.0), orientation=orientation, noise=0.02, bias=0.1, seed=3)


@pytest.fixture(scope="module")
def phantom() -> Phantom:
    return make_phantom(_spec())


_CACHE: dict[tuple[str, str], Segmentation] = {}


def _make(method: str, image: Image) -> Segmenter:
    """The method with default options; methods that use a transform to MNI152 get a world-identity
    stand-in (registration is tested in test_preprocess_register; here only the segmenter's contract is)."""
    cls = registry()[method]
    return cls(to_mni=WorldIdentity(image)) if cls.needs_registration else cls()


def _run(method: str, phantom: Phantom, key: str = "RAS") -> Segmentation:
    if (method, key) not in _CACHE:
        _CACHE[(method, key)] = _make(method, phantom.image).segment(phantom.image, phantom.brain_mask)
    return _CACHE[(method, key)]


def _outputs(seg: Segmentation) -> list[LabelImage]:
    return [x for x in (seg.tissue, seg.dseg) if x is not None]


def test_registry_is_not_empty_when_methods_ship() -> None:
    for name, cls in registry().items():
        assert issubclass(cls, Segmenter) and cls.name == name
        assert cls.kind in ("tissue", "structure", "region", "dual")
        assert cls.description and cls.reference


@pytest.mark.parametrize("method", METHODS)
def test_outputs_on_native_grid_with_valid_labels(method: str, phantom: Phantom) -> None:
    seg = _run(method, phantom)
    outputs = _outputs(seg)
    assert outputs, f"{method} returned neither tissue nor dseg"
    for out in outputs:
        assert out.shape == phantom.image.shape
        np.testing.assert_array_equal(out.affine, phantom.image.affine)
        assert np.issubdtype(out.array.dtype, np.integer)
    kind = registry()[method].kind
    if kind in ("tissue", "dual"):
        assert seg.tissue is not None
        assert set(np.unique(seg.tissue.array)) <= {0, *(t.id for t in TISSUES)}
        assert not np.any(seg.tissue.array[phantom.brain_mask.array == 0])
    if kind != "tissue":
        assert seg.dseg is not None
        assert set(seg.dseg.labels) <= {1, *(lab.id for lab in freesurfer())}


@pytest.mark.parametrize("method", METHODS)
def test_probabilities_sum_to_one_inside_mask(method: str, phantom: Phantom) -> None:
    seg = _run(method, phantom)
    if not seg.probabilities:
        pytest.skip(f"{method} produces no probability maps")
    stack = np.stack([p.array for p in seg.probabilities.values()])
    assert stack.min() >= -1e-6 and stack.max() <= 1 + 1e-6
    inside = phantom.brain_mask.array > 0
    if registry()[method].kind in ("tissue", "dual"):
        np.testing.assert_allclose(stack.sum(axis=0)[inside], 1.0, atol=1e-4)
        assert np.all(stack[:, ~inside] == 0)
    for p in seg.probabilities.values():
        assert p.same_grid(phantom.image)


@pytest.mark.parametrize("method", METHODS)
def test_deterministic(method: str, phantom: Phantom) -> None:
    again = _make(method, phantom.image).segment(phantom.image, phantom.brain_mask)
    for a, b in zip(_outputs(_run(method, phantom)), _outputs(again), strict=True):
        np.testing.assert_array_equal(a.array, b.array)


@pytest.mark.parametrize("method", METHODS)
def test_rejects_empty_mask_and_mask_off_grid(method: str, phantom: Phantom) -> None:
    seg = _make(method, phantom.image)
    empty = phantom.brain_mask.with_array(np.zeros_like(phantom.brain_mask.array))
    with pytest.raises(InputError, match="empty"):
        seg.segment(phantom.image, empty)
    shifted = phantom.brain_mask.array[1:]
    off = LabelImage(shifted, phantom.brain_mask.affine)
    with pytest.raises(InputError, match="grid"):
        seg.segment(phantom.image, off)


@pytest.mark.parametrize("method", METHODS)
def test_rejects_constant_image(method: str, phantom: Phantom) -> None:
    flat = Image(np.full(phantom.image.shape, 100.0, np.float32), phantom.image.affine)
    with pytest.raises(InputError):
        _make(method, flat).segment(flat, phantom.brain_mask)


def _orientation_cases() -> list[tuple[str, str]]:
    cases = []
    for method in METHODS:
        codes = ORIENTATION_SAMPLE if method in SLOW else ORIENTATION_CODES
        cases += [(method, code) for code in codes if code != "RAS"]
    return cases


@pytest.mark.parametrize(("method", "code"), _orientation_cases())
def test_same_world_result_in_every_orientation(method: str, code: str, phantom: Phantom) -> None:
    reference = _outputs(_run(method, phantom))
    other = make_phantom(_spec(code))
    seg = _make(method, other.image).segment(other.image, other.brain_mask)
    for ref, out in zip(reference, _outputs(seg), strict=True):
        assert out.same_grid(other.image)
        back = reorient(out, "RAS")
        agree = float(np.mean(back.array == ref.array))
        assert agree > 0.995, f"{method} in {code}: {agree:.4f} of voxels agree with RAS"
