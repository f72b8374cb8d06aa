"""Progress of the processing commands: one stderr line per recorded step, a final line, silence with -q."""

from __future__ import annotations

import io
import json
import logging
import re
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from mriquant.cli import main
from mriquant.core.case import Case, record_step
from mriquant.core.progress import StepEvent, logger, scope

#: A step's line outside a terminal: ``mriquant run: n4 done (2.9 s)``.
DONE = re.compile(r"mriquant (?P<command>\w+): (?P<name>.+) done \((?P<seconds>\d+\.\d) s\)")


@pytest.fixture(scope="module")
def stripped(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A skull-stripped 3 mm phantom head (the fast path: no skull stripping, no registration)."""
    from mriquant.io import write_image
    from mriquant.testing.phantom import PhantomSpec, make_phantom

    ph = make_phantom(PhantomSpec(spacing=(3.0, 3.0, 3.0), noise=0.02, bias=0.1))
    image = ph.image.with_array(np.where(ph.brain_mask.array > 0, ph.image.array, 0).astype(np.float32))
    return write_image(image, tmp_path_factory.mktemp("progress") / "stripped.nii.gz")


COMMANDS = {
    "run": ["--skullstripped", "--method", "otsu", "--no-structures"],
    "segment": ["--skullstripped", "--method", "otsu"],
    "preprocess": ["--skullstripped", "--steps", "skullstrip", "normalize", "--normalize", "zscore"],
}


def _check_lines(err: str, command: str, out: Path, steps: list[dict]) -> None:
    """One ``done`` line per recorded step, in order and with its time, then the final line naming ``out``."""
    *lines, final = err.splitlines()
    matches = [DONE.fullmatch(line) for line in lines]
    assert all(matches), lines
    assert [m["name"] for m in matches if m] == [s["name"] for s in steps]
    assert {m["command"] for m in matches if m} <= {command}
    for m, step in zip(matches, steps, strict=True):
        assert m is not None and float(m["seconds"]) == pytest.approx(step["seconds"], abs=0.051)
    assert re.fullmatch(rf"mriquant {command}: wrote {re.escape(str(out))} \(\d+\.\d s\)", final), final


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_piped_progress_has_one_line_per_recorded_step(
    command: str, stripped: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "out"
    assert main([command, str(stripped), "-o", str(out), *COMMANDS[command]]) == 0
    captured = capsys.readouterr()
    steps = json.loads((out / "manifest.json").read_text())["steps"]
    names = [s["name"] for s in steps]
    assert names[0] == "read" and names[-1] in ("write", "report")  # reading and writing are steps too
    _check_lines(captured.err, command, out, steps)
    assert captured.out == ""


def test_quiet_prints_nothing_on_success(stripped: Path, tmp_path: Path, capfd: pytest.CaptureFixture[str]) -> None:
    assert main(["-q", "run", str(stripped), "-o", str(tmp_path / "out"), *COMMANDS["run"]]) == 0
    assert capfd.readouterr() == ("", "")


class _Events(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.events: list[StepEvent] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.events.append(record.step_event)  # type: ignore[attr-defined]


@pytest.fixture
def events() -> Iterator[list[StepEvent]]:
    handler = _Events()
    level, propagate = logger.level, logger.propagate
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    logger.propagate = False  # the root handlers of earlier in-process commands wrote to closed captures
    yield handler.events
    logger.removeHandler(handler)
    logger.setLevel(level)
    logger.propagate = propagate


def test_case_step_announces_start_end_and_failure(events: list[StepEvent], capfd: pytest.CaptureFixture[str]) -> None:
    from mriquant.testing import make_phantom

    case = Case(make_phantom(shape=(8, 8, 8)).image)
    with case.step("n4"):
        pass
    with pytest.raises(RuntimeError), scope("followup"), case.step("skullstrip"):
        raise RuntimeError("no brain")
    assert [(e.name, e.status) for e in events] == [
        ("n4", "started"), ("n4", "done"), ("followup skullstrip", "started"), ("followup skullstrip", "failed")
    ]  # fmt: skip
    assert events[1].seconds == case.provenance[0].seconds and [s.name for s in case.provenance] == ["n4"]
    assert capfd.readouterr() == ("", "")  # the library itself never prints


def test_terminal_table_is_redrawn_only_on_step_events() -> None:
    """A running step shows when it started, no clock: nothing redraws while C++ code holds the GIL."""
    from rich.console import Console

    from mriquant.cli_progress import StepDisplay

    buffer = io.StringIO()
    console = Console(file=buffer, force_terminal=True, width=100, color_system=None)
    threads = threading.active_count()
    steps: list = []
    with StepDisplay("run", quiet=False, terminal=True, console=console) as display:
        with record_step(steps, "read"):
            pass
        with record_step(steps, "n4"):
            drawn = buffer.getvalue()
            assert "running since" in drawn.rsplit("read", 1)[-1] and "n4" in drawn
            time.sleep(0.6)  # longer than rich's default refresh period (0.25 s)
            assert buffer.getvalue() == drawn and threading.active_count() == threads
        display.finish("wrote out (0.6 s)")
    text = buffer.getvalue()
    last_table = text.rsplit("read", 1)[-1]
    assert re.search(r"✓\s+n4\s+0\.6 s", last_table) and "running" not in last_table
    assert text.rstrip().endswith("mriquant run: wrote out (0.6 s)")


def test_terminal_table_is_erased_on_error() -> None:
    from rich.console import Console

    from mriquant.cli_progress import StepDisplay

    buffer = io.StringIO()
    console = Console(file=buffer, force_terminal=True, width=100, color_system=None)
    display = StepDisplay("run", quiet=False, terminal=True, console=console)
    with pytest.raises(RuntimeError), display, record_step([], "n4"):
        raise RuntimeError("boom")
    assert "\x1b[2K" in buffer.getvalue().rsplit("failed", 1)[-1]  # the table's lines were cleared

