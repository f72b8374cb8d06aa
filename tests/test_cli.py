"""The command line: version, info, convert, run, output safety and the manifest."""

from __future__ import annotations

import json
import re
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from mriquant import __version__
from mriquant.cli import main

DEMO = Path(__file__).resolve().parents[1] / "src" / "mriquant" / "data" / "demo" / "chris_t1.nii.gz"


@pytest.fixture
def scan(tmp_path: Path) -> Path:
    rng = np.random.default_rng(1)
    data = (rng.random((20, 22, 18)) * 500).astype(np.int16)
    affine = np.array([[0, 0, -1.2, 50], [0.9, 0, 0, -40], [0, 1.1, 0, 10], [0, 0, 0, 1]], float)
    path = tmp_path / "in" / "scan.nii.gz"
    path.parent.mkdir()
    nib.save(nib.Nifti1Image(data, affine), str(path))
    return path


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--version"]) == 0
    assert capsys.readouterr().out.strip() == f"mriquant {__version__}"


def test_no_command_prints_help(capsys: pytest.CaptureFixture[str]) -> None:
    assert main([]) == 2
    assert "usage: mriquant" in capsys.readouterr().err


@pytest.mark.parametrize(
    "sub", ["info", "convert", "preprocess", "segment", "run", "longitudinal", "evaluate", "train"]
)
def test_every_subcommand_has_help(sub: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main([sub, "--help"]) == 0
    assert f"usage: mriquant {sub}" in capsys.readouterr().out


def test_info_json(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["info", "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["version"] == __version__
    assert {"nifti", "mgh", "minc", "nrrd", "metaimage", "dicom"} <= set(info["formats"])
    assert [r["id"] for r in info["label_tables"]["tissues"]] == [1, 2, 3]
    fs = {r["id"]: r["name"] for r in info["label_tables"]["freesurfer"]}
    assert fs[17] == "Left-Hippocampus" and fs[53] == "Right-Hippocampus" and fs[10] == "Left-Thalamus"
    assert "miccai2012-to-freesurfer" in info["label_maps"]
    assert info["versions"]["nibabel"] == nib.__version__


def test_info_text(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["info"]) == 0
    out = capsys.readouterr().out
    assert out.startswith(f"mriquant {__version__}") and "Label tables:" in out


def test_info_text_lists_models_and_label_colours(capsys: pytest.CaptureFixture[str]) -> None:
    from mriquant.core.labels import freesurfer
    from mriquant.models import read_manifest

    assert main(["info"]) == 0
    out = capsys.readouterr().out
    deep = read_manifest()["models"]["deep"]
    line = next(x for x in out.splitlines() if x.strip().startswith("deep:"))
    assert f"version {deep['version']}" in line and deep["date"][:10] in line and deep["licence"] in line
    assert deep["sha256"] in out and deep["file"] in out
    hippocampus = freesurfer().by_id(17)
    row = next(x for x in out.splitlines() if x.split()[:2] == ["17", "Left-Hippocampus"])
    assert [int(v) for v in re.findall(r"\d+", row.split("Left-Hippocampus")[1])] == list(hippocampus.rgb)
    assert sum(1 for x in out.splitlines() if re.match(r"\s+\d+\s+\S+\s+\(\s*\d+,", x)) == 3 + len(freesurfer())


def test_convert_keeps_native_grid(scan: Path, tmp_path: Path) -> None:
    out = tmp_path / "out" / "conv.nii.gz"
    assert main(["convert", str(scan), str(out)]) == 0
    src, dst = nib.load(str(scan)), nib.load(str(out))
    assert dst.shape == src.shape
    np.testing.assert_allclose(dst.affine, src.affine, atol=1e-6)
    np.testing.assert_allclose(dst.get_sform(), src.affine, atol=1e-6)
    np.testing.assert_allclose(dst.get_qform(), src.affine, atol=1e-5)
    np.testing.assert_array_equal(np.asarray(dst.dataobj), np.asarray(src.dataobj, dtype=np.float32))
    side = json.loads(out.with_name("conv.json").read_text())
    assert side["ConversionSoftware"] == "mriquant" and side["SourceFormat"] == "nifti"


def test_convert_refuses_to_overwrite_without_force(
    scan: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "conv.nii.gz"
    out.write_bytes(b"keep me")
    assert main(["convert", str(scan), str(out)]) == 2
    assert "--force" in capsys.readouterr().err
    assert out.read_bytes() == b"keep me"
    assert main(["convert", str(scan), str(out), "--force"]) == 0
    assert nib.load(str(out)).shape == (20, 22, 18)


def test_convert_never_writes_over_its_input(scan: Path, capsys: pytest.CaptureFixture[str]) -> None:
    before = scan.read_bytes()
    assert main(["convert", str(scan), str(scan), "--force"]) == 2
    assert "overlapping input" in capsys.readouterr().err
    assert scan.read_bytes() == before


def test_convert_rejects_non_nifti_output(scan: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["convert", str(scan), str(tmp_path / "x.mgz")]) == 2
    assert ".nii.gz" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in"]


def test_run_output_folder_needs_force(scan: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "run"
    out.mkdir()
    (out / "old.txt").write_text("old")
    assert main(["run", str(scan), "-o", str(out)]) == 2
    assert "--force" in capsys.readouterr().err
    assert (out / "old.txt").exists()
    # with --force the run starts, but this 20 x 22 x 18 scan holds no brain: it fails and the old outputs stay
    assert main(["run", str(scan), "-o", str(out), "--force"]) == 2
    *progress, error = capsys.readouterr().err.splitlines()
    assert error.startswith("mriquant run: error: Expected")  # one line, the last: after the steps that finished
    assert all(re.fullmatch(r"mriquant run: [\w:]+ done \(\d+\.\d s\)", line) for line in progress), progress
    assert main(["-q", "run", str(scan), "-o", str(out), "--force"]) == 2
    assert capsys.readouterr().err.splitlines() == [error]
    assert (out / "old.txt").exists() and sorted(p.name for p in out.iterdir()) == ["old.txt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in", "run"]  # no staging folders left


def test_run_output_over_input_is_refused(scan: Path, capsys: pytest.CaptureFixture[str]) -> None:
    before = scan.read_bytes()
    assert main(["run", str(scan), "-o", str(scan), "--force"]) == 2
    assert "overlapping input" in capsys.readouterr().err
    assert scan.read_bytes() == before


def test_train_without_training_data_is_refused_cleanly(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["train", str(tmp_path), "-o", str(tmp_path / "o"), "--max-steps", "1"]) == 2
    err = capsys.readouterr().err
    assert "Expected training data" in err and "Traceback" not in err
    assert not (tmp_path / "o").exists()


@pytest.mark.skipif(not DEMO.exists(), reason="demo scan not in the source tree")
def test_demo_scan_is_shipped_and_reads() -> None:
    from mriquant.io import read_image

    img = read_image(DEMO)
    assert img.shape == (188, 256, 190) and img.axcodes == "RAS"
    assert img.array.dtype == np.float32


def _stripped_phantom(tmp_path: Path, orientation: str = "LIA") -> Path:
    from mriquant.io import write_image
    from mriquant.testing.phantom import PhantomSpec, make_phantom

    ph = make_phantom(PhantomSpec(spacing=(2.0, 2.0, 2.0), orientation=orientation, noise=0.02, bias=0.1))
    stripped = ph.image.with_array(np.where(ph.brain_mask.array > 0, ph.image.array, 0).astype(np.float32))
    return write_image(stripped, tmp_path / "stripped.nii.gz")


def test_segment_region_growing_end_to_end(tmp_path: Path) -> None:
    scan = _stripped_phantom(tmp_path)
    out = tmp_path / "seg"
    argv = [
        "-q",
        "segment",
        str(scan),
        "-o",
        str(out),
        "--method",
        "region-growing",
        "--skullstripped",
        "--multiplier",
        "2.5",
        "--no-fill-holes",
    ]
    assert main(argv) == 0
    dseg = nib.load(str(out / "dseg.nii.gz"))
    src = nib.load(str(scan))
    assert dseg.shape == src.shape
    np.testing.assert_allclose(dseg.affine, src.affine, atol=1e-6)
    assert set(np.unique(np.asarray(dseg.dataobj))) == {0, 4, 43}
    manifest = json.loads((out / "manifest.json").read_text())
    assert [s["name"] for s in manifest["steps"]] == ["read", "skullstrip", "n4", "segment:region-growing", "write"]
    assert manifest["parameters"]["options"]["multiplier"] == 2.5
    assert manifest["parameters"]["options"]["fill_holes"] is False
    assert sorted(manifest["outputs"]) == sorted(p.name for p in out.iterdir())


def test_segment_unknown_method(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    scan = _stripped_phantom(tmp_path, "RAS")
    assert main(["segment", str(scan), "-o", str(tmp_path / "o"), "--method", "nope"]) == 2
    assert "Expected a method from" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


def test_segment_skullstripped_on_a_head_is_refused_cleanly(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from mriquant.io import write_image
    from mriquant.testing.phantom import PhantomSpec, make_phantom

    empty_brain = make_phantom(PhantomSpec(spacing=(3.0, 3.0, 3.0)))
    zero = empty_brain.image.with_array(np.zeros(empty_brain.image.shape, np.float32))
    zero.array[:4, :4, :4] = np.random.default_rng(0).random((4, 4, 4)) + 1.0  # a speck: not a brain
    scan = write_image(zero, tmp_path / "speck.nii.gz")
    assert main(["segment", str(scan), "-o", str(tmp_path / "o"), "--method", "region-growing", "--skullstripped"]) == 2
    assert "skull-stripped brain" in capsys.readouterr().err
