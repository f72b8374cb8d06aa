"""Every readable format round-trips: same voxels (float32) and the same RAS+ affine.

Sources are synthetic phantoms written with the formats' own libraries (nibabel,
SimpleITK, pynrrd); one is oblique, in a non-RAS orientation and off-centre, so a
sign or axis-order slip in any reader shows up as an affine mismatch.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import nibabel as nib
import nrrd
import numpy as np
import pytest

from mriquant.cli import main
from mriquant.core.image import Image
from mriquant.io import detect_format, read_image
from mriquant.testing import Phantom, PhantomSpec, make_phantom

AFFINE_ATOL_MM = 1e-4

ImageWriter = Callable[..., Path]

#: Oblique, anisotropic, off-centre and stored LIA: a hard case for every reader.
OBLIQUE = PhantomSpec(
    spacing=(3.0, 2.5, 3.5), orientation="LIA", rotation=(8.0, -5.0, 12.0), center=(3.0, -7.0, 11.0)
)

FORMATS = ["nifti1", "nifti1-gz", "nifti2", "nifti2-gz", "mgh", "mgz", "nrrd", "mha", "mhd"]
FAMILY = {"nifti1": "nifti", "nifti2": "nifti", "mgh": "mgh", "mgz": "mgh", "nrrd": "nrrd",
          "mha": "metaimage", "mhd": "metaimage"}


@pytest.fixture(scope="module")
def oblique() -> Phantom:
    return make_phantom(OBLIQUE)


@pytest.fixture(params=["ras", "oblique"])
def source(request: pytest.FixtureRequest, phantom: Phantom, oblique: Phantom) -> Image:
    return phantom.image if request.param == "ras" else oblique.image


def assert_same_image(read: Image, source: Image) -> None:
    assert read.array.dtype == np.float32
    assert read.shape == source.shape
    np.testing.assert_array_equal(read.array, source.array.astype(np.float32))
    np.testing.assert_allclose(read.affine, source.affine, rtol=0, atol=AFFINE_ATOL_MM)


@pytest.mark.parametrize("fmt", FORMATS)
def test_format_round_trips(fmt: str, source: Image, tmp_path: Path, write_image_as: ImageWriter) -> None:
    path = write_image_as(source, tmp_path, fmt)
    assert detect_format(path) == FAMILY[fmt.removesuffix("-gz")]
    read = read_image(path)
    assert_same_image(read, source)
    assert read.axcodes == source.axcodes


@pytest.mark.parametrize("code", ["RAS", "LPS", "PIR", "SLA", "ILP"])
@pytest.mark.parametrize("fmt", ["nrrd", "mha"])
def test_itk_formats_keep_every_orientation(fmt: str, code: str, tmp_path: Path,
                                            write_image_as: ImageWriter) -> None:
    image = make_phantom(OBLIQUE, orientation=code, spacing=(4.0, 4.0, 4.0)).image
    read = read_image(write_image_as(image, tmp_path, fmt))
    assert_same_image(read, image)
    assert read.axcodes == code


@pytest.mark.parametrize("space", ["right-anterior-superior", "left-posterior-superior"])
def test_nrrd_written_by_pynrrd_in_either_space(space: str, oblique: Phantom, tmp_path: Path) -> None:
    image = oblique.image
    flip = np.diag([1.0, 1.0, 1.0]) if space.startswith("right") else np.diag([-1.0, -1.0, 1.0])
    world = flip @ image.affine[:3, :4]
    header = {"space": space, "space directions": world[:, :3].T, "space origin": world[:, 3]}
    path = tmp_path / "pynrrd.nrrd"
    nrrd.write(str(path), image.array, header)
    assert_same_image(read_image(path), image)


@pytest.mark.parametrize("dtype", ["int16", "uint8"])
@pytest.mark.parametrize("fmt", ["nifti1-gz", "mgz", "nrrd"])
def test_integer_inputs_are_read_as_float32(dtype: str, fmt: str, tmp_path: Path,
                                            write_image_as: ImageWriter) -> None:
    image = make_phantom(OBLIQUE, dtype=dtype).image
    assert image.array.dtype == np.dtype(dtype)
    path = write_image_as(image, tmp_path, fmt)
    if fmt.startswith("nifti"):
        assert nib.load(path).get_data_dtype() == np.dtype(dtype)
    assert_same_image(read_image(path), image)


def test_scaled_integer_nifti_is_read_as_floats(oblique: Phantom, tmp_path: Path) -> None:
    raw = np.rint(oblique.image.array / 4).astype(np.int16)
    path = tmp_path / "scaled.nii"
    nii = nib.Nifti1Image(raw, oblique.image.affine)
    nii.header.set_sform(oblique.image.affine, code=1)
    nib.save(nii, str(path))
    header = nib.Nifti1Header.from_fileobj(path.open("rb"))
    header["scl_slope"], header["scl_inter"] = 0.25, -3.5  # nibabel's save would reset them
    with path.open("r+b") as fh:
        header.write_to(fh)
    proxy = nib.load(path).dataobj
    assert (proxy.slope, proxy.inter) == (0.25, -3.5)
    read = read_image(path)
    assert read.array.dtype == np.float32
    np.testing.assert_allclose(read.array, raw * 0.25 - 3.5, rtol=0, atol=1e-6)
    np.testing.assert_allclose(read.affine, oblique.image.affine, atol=AFFINE_ATOL_MM)


def test_nifti_scaled_by_nibabel_matches_nibabel(oblique: Phantom, tmp_path: Path) -> None:
    nii = nib.Nifti1Image(oblique.image.array, oblique.image.affine)
    nii.set_data_dtype(np.int16)
    path = tmp_path / "auto.nii.gz"
    nib.save(nii, str(path))
    loaded = nib.load(path)
    slope = float(loaded.dataobj.slope)
    assert loaded.get_data_dtype() == np.int16 and slope != 1.0
    read = read_image(path)
    np.testing.assert_allclose(read.array, loaded.get_fdata(), rtol=1e-6, atol=1e-3)
    assert np.abs(read.array - oblique.image.array).max() <= slope


@pytest.mark.parametrize(("qform_code", "sform_code"), [(1, 0), (0, 2), (1, 4)])
def test_nifti_qform_or_sform_alone_gives_the_affine(qform_code: int, sform_code: int, oblique: Phantom,
                                                     tmp_path: Path) -> None:
    nii = nib.Nifti1Image(oblique.image.array, None)
    nii.header.set_qform(oblique.image.affine, code=qform_code)
    nii.header.set_sform(oblique.image.affine if sform_code else None, code=sform_code)
    path = tmp_path / "codes.nii.gz"
    nib.save(nii, str(path))
    assert_same_image(read_image(path), oblique.image)


@pytest.mark.needs_data("brainweb-crisp/subject04_crisp_v.mnc.gz")
def test_real_minc1_matches_nibabel(data_dir: Path) -> None:
    path = data_dir / "brainweb-crisp" / "subject04_crisp_v.mnc.gz"
    reference = nib.load(path)
    read = read_image(path)
    assert read.array.dtype == np.float32
    assert read.shape == reference.shape
    np.testing.assert_allclose(read.affine, reference.affine, atol=AFFINE_ATOL_MM)
    for index in (90, 181, 270):
        np.testing.assert_array_equal(read.array[index], np.asarray(reference.dataobj[index], np.float32))
    assert read.meta["format"] == "minc"


@pytest.mark.parametrize("fmt", ["nifti1-gz", "nrrd", "mgz"])
def test_convert_keeps_shape_affine_and_writes_a_sidecar(fmt: str, oblique: Phantom, tmp_path: Path,
                                                         write_image_as: ImageWriter) -> None:
    src = write_image_as(oblique.image, tmp_path, fmt, name="input")
    out = tmp_path / "out" / "converted.nii.gz"
    assert main(["-q", "convert", str(src), str(out)]) == 0
    nii = nib.load(out)
    assert nii.shape == oblique.image.shape
    expected = nib.load(src).affine if fmt.startswith("nifti") else oblique.image.affine
    np.testing.assert_allclose(nii.affine, expected, atol=1e-5 if fmt.startswith("nifti") else 1e-4)
    for which in ("qform", "sform"):
        matrix, code = getattr(nii.header, f"get_{which}")(coded=True)
        assert code > 0, which
        np.testing.assert_allclose(matrix, nii.affine, atol=1e-5, err_msg=which)
    np.testing.assert_array_equal(np.asarray(nii.dataobj, np.float32), oblique.image.array)
    sidecar = json.loads((out.parent / "converted.json").read_text())
    assert sidecar["ConversionSoftware"] == "mriquant"


def test_convert_refuses_to_overwrite_without_force(phantom_files: dict[str, Path], tmp_path: Path,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "out.nii.gz"
    assert main(["-q", "convert", str(phantom_files["image"]), str(out)]) == 0
    capsys.readouterr()
    assert main(["-q", "convert", str(phantom_files["image"]), str(out)]) == 2
    assert "--force" in capsys.readouterr().err
    assert main(["-q", "convert", str(phantom_files["image"]), str(out), "--force"]) == 0


@pytest.mark.parametrize("fmt", ["mha", "nrrd"])
def test_itk_thin_volume_keeps_its_voxels(fmt: str, tmp_path: Path, write_image_as: ImageWriter) -> None:
    import SimpleITK as sitk

    values = (np.arange(64, dtype=np.float32) + 1).reshape(64, 1, 1)
    source = Image(values, np.diag([2.0, 1.0, 1.0, 1.0]))
    read = read_image(write_image_as(source, tmp_path, fmt))
    _ = [sitk.Image(64, 1, 1, sitk.sitkFloat32) for _ in range(8)]  # reuse freed buffers, if any
    assert_same_image(read, source)
