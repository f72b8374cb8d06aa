"""mriquant.core.ants_bridge: ANTs calls with a fixed ITK thread count in a child process."""

from __future__ import annotations

import os

import pytest

from mriquant.core import ants_bridge
from mriquant.core.errors import InputError
from mriquant.core.labels import freesurfer


def test_child_runs_with_the_thread_count_asked(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(ants_bridge, "_USER_THREADS", None)
    threads = ants_bridge.run_with_itk_threads(os.getenv, ants_bridge.ITK_THREADS_ENV, threads=2)
    assert threads == "2"


def test_child_errors_reach_the_caller(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(ants_bridge, "_USER_THREADS", None)
    with pytest.raises(InputError, match="Expected a label id"):
        ants_bridge.run_with_itk_threads(freesurfer().by_id, 99999, threads=2)


def test_a_thread_count_the_user_set_is_kept(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(ants_bridge, "_USER_THREADS", "3")
    assert ants_bridge.run_with_itk_threads(os.getpid, threads=2) == os.getpid()  # ran in this process
