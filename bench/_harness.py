"""What every benchmark shares: data paths, memory readings, and running a method in a child process.

Two ways to isolate a method, so that its time and memory are its own:

- :func:`run_forked`: call a function in a forked child (the parent's imports and data are shared, so the
  time is the call alone); the child reports its wall time and its peak resident memory minus its memory
  at the start (``rss_delta_mb``), or the exception it raised;
- :func:`run_script`: run a script again in a fresh interpreter (imports included in time and memory),
  e.g. ``python bench/n4.py --one ...``; its last stdout line is its JSON report, and the child's own
  ``ru_maxrss`` is read with ``os.wait4``.

Scripts import this module as ``_harness`` (``python bench/NAME.py`` puts ``bench/`` on ``sys.path``).
"""

from __future__ import annotations

import json
import multiprocessing as mp
import os
import resource
import subprocess
import sys
import threading
import time
import traceback
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

#: The repository (the folder holding ``bench/`` and ``src/``).
REPO = Path(__file__).resolve().parents[1]
#: The shared benchmark data, next to the repository (see ../shared/data/README.md).
DATA = REPO.parent / "shared" / "data"
#: MICCAI 2012 multi-atlas training set: ``NNNN_SS``, ``NNNN_mask``, ``NNNN_glm``, ``NNNN_classified``, ...
MICCAI = DATA / "miccai2012" / "train"
#: BrainWeb crisp anatomical models (``subjectNN_crisp_v.mnc.gz``).
BRAINWEB = DATA / "brainweb-crisp"
#: Single T1 scans (``chris_t1.nii.gz``, BrainWeb T1 volumes).
T1 = DATA / "t1"


def results_dir(name: str) -> Path:
    """``bench/<name>``: where a benchmark writes ``latest.md`` and ``latest.json``."""
    return REPO / "bench" / name


# --------------------------------------------------------------------------- memory and CPU


def rss_mb() -> float:
    """This process's resident memory now (MB), from ``/proc/self/statm``."""
    with open("/proc/self/statm", encoding="ascii") as f:
        pages = int(f.read().split()[1])
    return pages * os.sysconf("SC_PAGE_SIZE") / 2**20


def peak_rss_mb() -> float:
    """This process's peak resident memory (MB, ``ru_maxrss``; Linux carries it across fork and exec)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def own_peak_mb() -> float | None:
    """This process's peak resident memory since its ``exec`` (Linux ``VmHWM``, MB), None elsewhere.

    ``ru_maxrss`` of a child is not that: Linux carries the parent's peak across fork and exec, so a
    benchmark that has just simulated its inputs would charge their memory to every method.
    """
    status = Path("/proc/self/status")
    if not status.is_file():
        return None
    for line in status.read_text().splitlines():
        if line.startswith("VmHWM:"):
            return float(line.split()[1]) / 1024.0
    return None


def release_free_heap() -> None:
    """Give freed heap pages back to the OS (glibc), so a child's RSS growth shows what the method needs."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def cpu_seconds() -> float:
    """User + system CPU seconds of this process, all threads."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


@dataclass
class Timing:
    """Wall and CPU seconds of a :func:`timed` block (filled when the block ends)."""

    seconds: float = 0.0
    cpu: float = 0.0


@contextmanager
def timed() -> Iterator[Timing]:
    """Measure the wall time (``perf_counter``) and CPU time (``process_time``) of a block."""
    timing = Timing()
    wall, cpu = time.perf_counter(), time.process_time()
    yield timing
    timing.seconds, timing.cpu = time.perf_counter() - wall, time.process_time() - cpu


# --------------------------------------------------------------------------- forked child


@dataclass
class Forked:
    """What :func:`run_forked` reports.

    Attributes
    ----------
    value : Any
        What the function returned (after ``post``), None on failure.
    seconds : float
        Wall time of the call alone.
    rss_delta_mb : float
        The child's peak resident memory minus its resident memory at the start (MB, >= 0).
    peak_mb : float
        The child's peak resident memory (``ru_maxrss``, MB; includes what it inherited from the parent).
    error : str or None
        ``"Type: message"`` of the exception the call raised, or ``"timeout"``.
    """

    value: Any = None
    seconds: float = 0.0
    rss_delta_mb: float = 0.0
    peak_mb: float = 0.0
    error: str | None = None


def _forked_child(conn: Any, fn: Callable[..., Any], args: tuple[Any, ...], post: Callable[[Any], Any] | None,
                  trim_heap: bool, error_chars: int | None, print_traceback: bool) -> None:  # fmt: skip
    try:
        if trim_heap:
            release_free_heap()
        start = rss_mb()
        t0 = time.perf_counter()
        value = fn(*args)
        seconds = time.perf_counter() - t0
        peak = peak_rss_mb()
        value = post(value) if post is not None else value
        conn.send(Forked(value, seconds, max(peak - start, 0.0), peak))
    except Exception as exc:  # a failure is reported to the parent (a row in the table), never a hang
        if print_traceback:
            traceback.print_exc()
        message = f"{type(exc).__name__}: {exc}"
        conn.send(Forked(error=message[:error_chars] if error_chars else message))
    finally:
        conn.close()


def run_forked(fn: Callable[..., Any], *args: Any, timeout: float | None = 3600.0,
               post: Callable[[Any], Any] | None = None, trim_heap: bool = False, error_chars: int | None = 300,
               print_traceback: bool = False) -> Forked:  # fmt: skip
    """Call ``fn(*args)`` in a forked child and report its result, wall time and memory.

    Parameters
    ----------
    fn, args
        The call to measure; its result is sent back through a pipe (pickled).
    timeout : float or None
        Seconds to wait for the child's report (None: wait as long as it takes).
    post : callable, optional
        Applied in the child to the result, outside the timing (e.g. scores, or a smaller dtype).
    trim_heap : bool
        Give freed heap pages back to the OS before measuring (:func:`release_free_heap`).
    error_chars : int or None
        Length the error message is cut to (None: whole).
    print_traceback : bool
        Print the child's traceback to stderr on failure.
    """
    ctx = mp.get_context("fork")
    parent, child = ctx.Pipe(duplex=False)
    proc = ctx.Process(target=_forked_child, args=(child, fn, args, post, trim_heap, error_chars, print_traceback))
    proc.start()
    child.close()
    ready = True if timeout is None else parent.poll(timeout)
    result: Forked = parent.recv() if ready else Forked(error="timeout")
    proc.join()
    return result


# --------------------------------------------------------------------------- fresh interpreter


@dataclass
class ScriptRun:
    """What :func:`run_script` reports: exit code, output, and the child's own ``ru_maxrss`` (MB)."""

    command: list[str]
    returncode: int
    stdout: str
    stderr: str
    peak_mb: float

    @property
    def lines(self) -> list[str]:
        """Stdout lines."""
        return self.stdout.splitlines()

    def report(self) -> dict[str, Any]:
        """The JSON object on the last stdout line."""
        data: dict[str, Any] = json.loads(self.stdout.strip().splitlines()[-1])
        return data


def _drain(stream: Any, into: list[str]) -> threading.Thread:
    thread = threading.Thread(target=lambda: into.append(stream.read()), daemon=True)
    thread.start()
    return thread


def run_script(script: str | Path, *args: str, env: dict[str, str] | None = None, capture_stderr: bool = True,
               check: bool = True) -> ScriptRun:  # fmt: skip
    """Run ``python SCRIPT ARGS...`` in a fresh interpreter and wait for it.

    The pipes are drained while the child runs (no deadlock on large output), then the child is reaped with
    ``os.wait4`` for its resource usage. With ``check``, a non-zero exit raises
    :class:`subprocess.CalledProcessError` carrying the output. ``capture_stderr=False`` lets the child's
    stderr through to ours.
    """
    command = [sys.executable, str(script), *args]
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE if capture_stderr else None,
                            text=True, env=env)  # fmt: skip
    out: list[str] = []
    err: list[str] = []
    threads = [_drain(proc.stdout, out)] + ([_drain(proc.stderr, err)] if capture_stderr else [])
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)  # reaped here: Popen must not wait again
    for thread in threads:
        thread.join()
    for stream in (proc.stdout, proc.stderr):
        if stream is not None:
            stream.close()
    run = ScriptRun(command, proc.returncode, "".join(out), "".join(err), usage.ru_maxrss / 1024.0)
    if check and run.returncode != 0:
        raise subprocess.CalledProcessError(run.returncode, command, run.stdout, run.stderr)
    return run
