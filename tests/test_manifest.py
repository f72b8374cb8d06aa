"""The run manifest: versions of every result-changing dependency and the thread counts in effect."""

from __future__ import annotations

import re
import tomllib
from importlib.metadata import version
from pathlib import Path

import pytest

from mriquant import manifest

PYPROJECT = Path(__file__).resolve().parents[1] / "pyproject.toml"
#: Runtime dependencies that cannot change an output.
NOT_RESULTS = {"rich"}


def _runtime_dependencies() -> list[str]:
    requirements = tomllib.loads(PYPROJECT.read_text())["project"]["dependencies"]
    return [re.split(r"[<>=!~\[; ]", r, maxsplit=1)[0] for r in requirements]


def test_every_runtime_dependency_is_versioned() -> None:
    found = manifest.versions()
    missing = [d for d in _runtime_dependencies() if d not in NOT_RESULTS and d not in found]
    assert missing == []
    assert found["antspyx"] == version("antspyx")
    assert found["matplotlib"] == version("matplotlib")  # draws the report


def test_thread_counts_recorded(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    import SimpleITK as sitk

    monkeypatch.setenv("ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS", "1")
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    scan = tmp_path / "scan.nii.gz"
    scan.write_bytes(b"x")
    doc = manifest.build(command="run", argv=["run", str(scan)], parameters={}, inputs=[scan], outputs=[],
                         steps=[], started="2024-01-01T00:00:00+00:00", seconds=1.0)
    threads = doc["threads"]
    assert threads["SimpleITK"] == sitk.ProcessObject.GetGlobalDefaultNumberOfThreads()
    assert threads["ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS"] == "1"
    assert threads["OMP_NUM_THREADS"] is None
    assert threads["cpu_count"] >= 1
