"""The command line's progress display: one entry per processing step, on stderr.

The library announces every step through the logger ``mriquant.progress``
(:mod:`mriquant.core.progress`); :class:`StepDisplay` attaches to it for the duration of a command.

- stderr is not a terminal (a log, a pipe, a batch job): one line as each step finishes,
  ``mriquant run: n4 done (23.8 s)``, and after a success a final line naming the output
  (``mriquant run: wrote out (84.2 s)``). An input refused when it is read leaves exactly one line on
  stderr, the error: there is no line when a step starts, and the lines of the ``read`` steps wait for the
  first processing step. A refusal during processing (no brain found, say) follows the lines of the steps
  that finished; the error is always the last line, and the only one with ``error:``.
- stderr is a terminal: a table with one row per step, its status and its time. A running step shows the
  clock time it started at, not a ticking timer: ANTs' C++ calls (N4, registration) hold the GIL for tens of
  seconds, so no Python thread can redraw during them and a live timer would freeze and mislead. The table is
  redrawn only when a step starts or ends, from the thread that runs the steps. On an error it is erased, so
  the error line stands alone as before.
- ``-q``: nothing is attached; only the error line of a failure is printed.
"""

from __future__ import annotations

import logging
import sys
from dataclasses import dataclass
from datetime import datetime
from types import TracebackType
from typing import Any, TextIO

from mriquant.core import progress
from mriquant.core.progress import StepEvent


class _Lines(logging.Handler):
    """Non-terminal display: ``mriquant <command>: <step> done (<s> s)`` as each step finishes.

    The lines of the ``read`` steps are held until another step starts: an input that cannot be read
    (the second of ``longitudinal``'s, say) leaves its error line alone on stderr.
    """

    def __init__(self, command: str) -> None:
        super().__init__(logging.INFO)
        self.command = command
        self.held: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        event = getattr(record, "step_event", None)
        if not isinstance(event, StepEvent):
            return
        line = f"mriquant {self.command}: {event.describe()}"
        if event.name.split()[-1] == "read":
            if event.status == "done":
                self.held.append(line)
            return
        self.settle(print_them=True)
        if event.status == "done":
            _print(line)

    def settle(self, *, print_them: bool) -> None:
        """Print (or, after an error, drop) the held lines.

        Not :meth:`logging.Handler.flush`, which logging calls again at interpreter exit, after the error line.
        """
        for held in self.held if print_them else ():
            _print(held)
        self.held = []


@dataclass
class _Row:
    name: str
    status: str
    started: str
    seconds: float | None = None


class _Table(logging.Handler):
    """Terminal display: a rich table of the steps, redrawn on each step event (no refresh thread)."""

    def __init__(self, command: str, console: Any) -> None:
        from rich.live import Live

        super().__init__(logging.INFO)
        self.command = command
        self.rows: list[_Row] = []
        self.live = Live(console=console, auto_refresh=False, transient=False, get_renderable=self.render)

    def render(self) -> Any:
        """The table: one row per step (status mark, name, seconds, and for a running step its start time)."""
        from rich.table import Table

        table = Table.grid(padding=(0, 2))
        table.add_column(width=1)
        table.add_column()
        table.add_column(justify="right")
        table.add_column()
        marks = {"started": "[yellow]…[/]", "done": "[green]✓[/]", "failed": "[red]✗[/]"}
        notes = {"started": "[dim]running since {}[/]", "done": "", "failed": "[red]failed[/]"}
        for row in self.rows:
            seconds = "" if row.seconds is None else f"{row.seconds:.1f} s"
            table.add_row(marks[row.status], row.name, seconds, notes[row.status].format(row.started))
        return table

    def emit(self, record: logging.LogRecord) -> None:
        event = getattr(record, "step_event", None)
        if not isinstance(event, StepEvent):
            return
        running = [r for r in self.rows if r.name == event.name and r.status == "started"]
        if event.status == "started" or not running:
            self.rows.append(_Row(event.name, event.status, datetime.now().strftime("%H:%M:%S"), event.seconds))
        else:
            running[-1].status, running[-1].seconds = event.status, event.seconds
        self.live.refresh()


class StepDisplay:
    """Show the steps of one command on stderr while the ``with`` block runs.

    Parameters
    ----------
    command : str
        Subcommand name, the prefix of every line (``"run"``).
    quiet : bool
        Show nothing (``-q``).
    terminal : bool, optional
        Draw the terminal table instead of lines; default: whether stderr is a terminal.
    console : rich.console.Console, optional
        Where the terminal table is drawn (default: stderr).

    Examples
    --------
    >>> with StepDisplay("run", quiet=False) as display:  # doctest: +SKIP
    ...     case = run_pipeline(case, config)
    ...     display.finish("wrote out (84.2 s)")

    """

    def __init__(self, command: str, *, quiet: bool, terminal: bool | None = None, console: Any = None) -> None:
        self.command = command
        self.console = console
        self.quiet = quiet
        self.terminal = _stderr_is_terminal() if terminal is None else terminal
        self.handler: _Lines | _Table | None = None
        self.final: str | None = None
        self._saved: tuple[int, bool] = (logging.NOTSET, True)
        self._streams: list[tuple[logging.StreamHandler[Any], Any]] = []

    def finish(self, message: str) -> None:
        """Print ``mriquant <command>: <message>`` when the block ends without an error."""
        self.final = message

    def __enter__(self) -> StepDisplay:
        if self.quiet:
            return self
        if self.terminal:
            from rich.console import Console

            table = _Table(self.command, self.console or Console(stderr=True))
            original = sys.stderr
            table.live.start()  # from here on sys.stderr is rich's proxy, which prints above the table
            self._route_logs_through(original, sys.stderr)
            self.handler = table
        else:
            self.handler = _Lines(self.command)
        self._saved = (progress.logger.level, progress.logger.propagate)
        progress.logger.setLevel(logging.INFO)
        progress.logger.propagate = False  # -v would print every event a second time
        progress.logger.addHandler(self.handler)
        return self

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, traceback: TracebackType | None
    ) -> None:
        if self.handler is not None:
            progress.logger.removeHandler(self.handler)
            progress.logger.setLevel(self._saved[0])
            progress.logger.propagate = self._saved[1]
        if isinstance(self.handler, _Table):
            self.handler.live.transient = error is not None  # an error line stands alone
            self.handler.live.stop()
            self._restore_logs()
        if isinstance(self.handler, _Lines):
            self.handler.settle(print_them=error is None)
        if error is None and self.final is not None and not self.quiet:
            line = f"mriquant {self.command}: {self.final}"
            if self.console is not None:
                self.console.print(line, highlight=False, markup=False)
            else:
                _print(line)

    def _route_logs_through(self, original: TextIO, proxy: TextIO) -> None:
        """Point the root logger's handlers that write to ``original`` at ``proxy`` (log lines print above)."""
        for handler in logging.getLogger().handlers:
            if isinstance(handler, logging.StreamHandler) and handler.stream is original:
                self._streams.append((handler, handler.setStream(proxy)))

    def _restore_logs(self) -> None:
        for handler, original in self._streams:
            handler.setStream(original)
        self._streams = []


def _stderr_is_terminal() -> bool:
    from rich.console import Console

    console = Console(stderr=True)
    return bool(console.is_terminal and not console.is_dumb_terminal)


def _print(line: str) -> None:
    print(line, file=sys.stderr, flush=True)
