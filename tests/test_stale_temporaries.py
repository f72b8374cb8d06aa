"""Temporaries of killed runs: removed by the next write beside them, never those of live runs or not ours."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

import mriquant
from mriquant.cli import main
from mriquant.io.write import atomic_path, output_folder, owner_token

SRC = Path(mriquant.__file__).resolve().parents[1]


def _dead_pid() -> int:
    """The id of a process that has exited (and been reaped)."""
    proc = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, check=True)
    return int(proc.stdout)


@pytest.fixture
def live_pid() -> Iterator[int]:
    """The id of another process that runs for the whole test."""
    proc = subprocess.Popen(["sleep", "120"])
    yield proc.pid
    proc.kill()
    proc.wait()


def _staging(parent: Path, pid: int, *, owner: str | None = None, name: str = "out", kind: str = "staging") -> Path:
    folder = parent / f".{name}.mriquant-{kind}-{pid}-{owner or owner_token()}-a1b2c3d4"
    folder.mkdir()
    (folder / "tissue.nii.gz").write_bytes(b"partial")
    return folder


def test_staging_folder_of_a_dead_run_is_removed(tmp_path: Path) -> None:
    dead = _dead_pid()
    stale = [_staging(tmp_path, dead), _staging(tmp_path, dead, name="other"), _staging(tmp_path, dead, kind="old")]
    with output_folder(tmp_path / "out") as staging:
        (staging / "a.txt").write_text("a")
    assert not any(p.exists() for p in stale)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_staging_folder_of_a_live_run_is_kept(tmp_path: Path, live_pid: int) -> None:
    running = _staging(tmp_path, live_pid)
    with output_folder(tmp_path / "out") as staging:
        (staging / "a.txt").write_text("a")
        assert running.is_dir()
    assert (running / "tissue.nii.gz").read_bytes() == b"partial"
    with output_folder(tmp_path / "out", force=True):
        pass
    assert running.is_dir()


def test_folders_that_are_not_ours_or_not_checkable_are_kept(tmp_path: Path) -> None:
    dead = _dead_pid()
    kept = [
        _staging(tmp_path, dead, owner="elsewhere.ns1"),  # another host or container: its pid means nothing here
        tmp_path / ".out.x8k2p0qz",  # a hidden folder of the same shape as mkdtemp's, but not named by us
        tmp_path / ".git",
        tmp_path / f".out.mriquant-notes-{dead}-{owner_token()}-a1b2c3d4",  # unknown kind
    ]
    for path in kept[1:]:
        path.mkdir()
    (tmp_path / f".out.mriquant-staging-{dead}-{owner_token()}-zzzzzzzz").symlink_to(tmp_path / ".git")
    with output_folder(tmp_path / "out"):
        pass
    assert all(p.is_dir() for p in kept)
    assert (tmp_path / f".out.mriquant-staging-{dead}-{owner_token()}-zzzzzzzz").is_symlink()


def test_atomic_temporary_of_a_dead_writer_is_removed(tmp_path: Path, live_pid: int) -> None:
    stale = tmp_path / f".t1.nii.mriquant-tmp-{_dead_pid()}-{owner_token()}-q9w8e7r6.nii.gz"
    running = tmp_path / f".t1.nii.mriquant-tmp-{live_pid}-{owner_token()}-q9w8e7r6.nii.gz"
    for path in (stale, running):
        path.write_bytes(b"partial")
    with atomic_path(tmp_path / "t1.nii.gz") as tmp:
        assert tmp.name.startswith(f".t1.nii.mriquant-tmp-{os.getpid()}-{owner_token()}-")
        tmp.write_bytes(b"done")
    assert not stale.exists() and running.exists()
    assert (tmp_path / "t1.nii.gz").read_bytes() == b"done"


@pytest.mark.slow
def test_run_killed_mid_way_leaves_nothing_after_the_next_run(tmp_path: Path) -> None:
    """``kill -9`` of a real ``mriquant run``; the next run into the same folder removes its staging folder."""
    from mriquant.io import write_image
    from mriquant.testing.phantom import PhantomSpec, make_phantom

    ph = make_phantom(PhantomSpec(spacing=(2.0, 2.0, 2.0), noise=0.02, bias=0.1))
    scan = write_image(ph.image.with_array(np.where(ph.brain_mask.array > 0, ph.image.array, 0)), tmp_path / "s.nii.gz")
    results = tmp_path / "results"
    results.mkdir()
    argv = ["run", str(scan), "-o", str(results / "out"), "--skullstripped", "--method", "otsu", "--no-structures"]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(SRC), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.Popen([sys.executable, "-m", "mriquant", "-q", *argv], env=env, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 60
    while not list(results.glob(".out.*")) and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    assert proc.poll() is None, f"the run ended before it could be killed: {proc.stderr.read() if proc.stderr else ''}"
    time.sleep(0.5)  # mid-way: reading, N4
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert [p.name.startswith(".out.") for p in results.iterdir()] == [True]  # the killed run's staging folder
    assert main(["-q", *argv]) == 0
    assert [p.name for p in results.iterdir()] == ["out"]
    assert (results / "out" / "tissue.nii.gz").is_file()
