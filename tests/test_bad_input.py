"""The bad-input corpus: every command rejects each entry with exit 2, one line, nothing written."""

from __future__ import annotations

import hashlib
import sys
from pathlib import Path

import pytest

from mriquant.cli import main

sys.path.insert(0, str(Path(__file__).parent / "corpus"))
from make_bad_inputs import BadInput, build

COMMANDS = ("convert", "run", "preprocess", "segment")


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> dict[str, BadInput]:
    return build(tmp_path_factory.mktemp("bad"))


def _fingerprint(path: Path) -> dict[str, str]:
    if not path.exists():
        return {}
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    return {str(f): hashlib.sha256(f.read_bytes()).hexdigest() for f in files}


def _argv(command: str, entry: BadInput, out: Path) -> list[str]:
    if command == "convert":
        return ["convert", str(entry.path), str(out / "x.nii.gz"), *entry.extra_args]
    method = ["--method", "region-growing"] if command == "segment" else []
    return [command, str(entry.path), "-o", str(out / "result"), *method, *entry.extra_args]


NAMES = (
    "missing",
    "empty",
    "truncated_gzip",
    "text_named_nii_gz",
    "2d",
    "4d",
    "nan",
    "zero",
    "singular_affine",
    "zero_length_axis",
    "empty_dicom_folder",
    "non_dicom_folder",
    "dicom_mixed_orientation",
)


@pytest.mark.parametrize("command", COMMANDS)
@pytest.mark.parametrize("name", NAMES)
def test_bad_input_is_rejected_cleanly(
    corpus: dict[str, BadInput], name: str, command: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    entry = corpus[name]
    before = _fingerprint(entry.path)
    code = main(_argv(command, entry, tmp_path))
    err = capsys.readouterr().err
    lines = err.splitlines()
    assert code == 2, err
    assert len(lines) == 1, err  # exactly one line, no blank ones
    assert lines[0].startswith(f"mriquant {command}: error: Expected"), lines[0]
    assert entry.expect.lower() in lines[0].lower(), lines[0]
    assert "Traceback" not in err
    assert list(tmp_path.iterdir()) == []  # nothing written, not even a temporary
    assert _fingerprint(entry.path) == before  # input untouched


def test_corpus_covers_every_case(corpus: dict[str, BadInput]) -> None:
    assert set(corpus) == set(NAMES)


def test_4d_with_volume_is_accepted(corpus: dict[str, BadInput], tmp_path: Path) -> None:
    out = tmp_path / "v.nii.gz"
    assert main(["convert", str(corpus["4d"].path), str(out), "--volume", "1"]) == 0
    assert out.exists() and out.with_name("v.json").exists()


def test_4d_volume_out_of_range(
    corpus: dict[str, BadInput], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["convert", str(corpus["4d"].path), str(tmp_path / "v.nii.gz"), "--volume", "5"]) == 2
    assert "between 0 and 1" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []
