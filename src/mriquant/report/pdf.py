"""The PDF report: figure pages, then the tables typeset in monospace on A4 pages.

Everything is drawn by matplotlib (``PdfPages``), so no browser is needed. The tables are the
same :class:`~mriquant.report.html.ReportContent` the HTML shows; an undefined value reads
``— [n]`` and note *n* at the end gives the reason. Long cells wrap inside their column.
"""

from __future__ import annotations

import dataclasses
import textwrap
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from matplotlib.backends.backend_pdf import PdfPages
from matplotlib.figure import Figure
from matplotlib.layout_engine import ConstrainedLayoutEngine
from matplotlib.text import Text

from mriquant.report.figures import ReportFigure
from mriquant.report.html import ReportContent, Section, Table, cell_text

#: A4 portrait in inches.
PAGE_SIZE = (8.27, 11.69)
#: Page margin in inches.
MARGIN = 0.55
#: Body font size in points; DejaVu Sans Mono advances 0.602 em per character.
BODY_PT = 7.5
_CHAR_PT = 0.602 * BODY_PT
#: Characters per body line.
LINE_CHARS = int((PAGE_SIZE[0] - 2 * MARGIN) * 72 / _CHAR_PT)
#: Tables of at most this many lines stay on one page.
KEEP_TABLE_LINES = 16
#: Narrowest a column is squeezed to when a table is too wide.
MIN_COLUMN = 6
_GAP = "  "


@dataclass(frozen=True)
class _Line:
    """One typeset line; ``keep`` lines stay on the page of the line before them."""

    text: str
    size: float = BODY_PT
    bold: bool = False
    keep: bool = False
    lead: float = 1.4

    @property
    def height(self) -> float:
        """Line height in points."""
        return self.size * self.lead


def _column_widths(table: Table, texts: Sequence[Sequence[str]]) -> list[int]:
    """Natural column widths, the widest squeezed until the table fits :data:`LINE_CHARS`."""
    widths = [max([len(h), *(len(row[c]) for row in texts)]) for c, h in enumerate(table.columns)]
    budget = LINE_CHARS - len(_GAP) * (len(widths) - 1)
    while sum(widths) > budget and max(widths) > MIN_COLUMN:
        widest = widths.index(max(widths))
        widths[widest] = max(MIN_COLUMN, widths[widest] - max(1, sum(widths) - budget))
    return widths


def _row_lines(cells: Sequence[str], widths: Sequence[int], numeric: frozenset[int], *, bold: bool) -> list[_Line]:
    """One table row as lines; cells wrap within their column and the row's lines stay together."""
    wrapped = [textwrap.wrap(text, width, break_on_hyphens=False) or [""] for text, width in zip(cells, widths,
                                                                                                  strict=True)]
    lines = []
    for n in range(max(len(w) for w in wrapped)):
        parts = []
        for c, (chunks, width) in enumerate(zip(wrapped, widths, strict=True)):
            chunk = chunks[n] if n < len(chunks) else ""
            parts.append(chunk.rjust(width) if c in numeric else chunk.ljust(width))
        lines.append(_Line(_GAP.join(parts).rstrip(), bold=bold, keep=n > 0))
    return lines


def _table_lines(table: Table, footnotes: dict[str, int]) -> list[_Line]:
    texts = [[cell_text(c, footnotes) for c in row] for row in table.rows]
    widths = _column_widths(table, texts)
    lines = [_Line(table.title, size=9.0, bold=True)]
    header = _row_lines(table.columns, widths, table.numeric, bold=True)
    lines += [_Line(h.text, bold=True, keep=True) for h in header]
    lines.append(_Line("─" * min(LINE_CHARS, sum(widths) + len(_GAP) * (len(widths) - 1)), keep=True, lead=0.8))
    for row in texts:
        lines += _row_lines(row, widths, table.numeric, bold=False)
    lines += [_Line(t, keep=n > 0) for note in table.notes for n, t in enumerate(textwrap.wrap(note, LINE_CHARS))]
    if len(lines) <= KEEP_TABLE_LINES:  # a short table is never split across pages
        lines = [lines[0], *(dataclasses.replace(line, keep=True) for line in lines[1:])]
    lines.append(_Line(""))
    return lines


def _section_lines(content: ReportContent, section: Section, figure_pages: dict[str, int]) -> list[_Line]:
    footnotes = content.footnotes()
    lines = [_Line(""), _Line(section.title, size=11.0, bold=True)]
    for note in section.notes:
        lines += [_Line(t, keep=n > 0) for n, t in enumerate(textwrap.wrap(note, LINE_CHARS))]
    for key in section.figures:
        lines.append(_Line(f"Figure: {content.figures[key].title}, page {figure_pages[key]}."))
    for table in section.tables:
        lines += _table_lines(table, footnotes)
    return lines


def _document_lines(content: ReportContent, figure_pages: dict[str, int]) -> list[_Line]:
    footnotes = content.footnotes()
    lines = [_Line(content.title, size=14.0, bold=True), _Line(content.identity, size=10.0),
             _Line(f"Written by {content.generator}. Automatic measurements: review before use.")]
    for section in content.sections:
        lines += _section_lines(content, section, figure_pages)
    if footnotes:
        lines += [_Line(""), _Line("Notes", size=11.0, bold=True)]
        for reason, n in footnotes.items():
            lines += [_Line(t, keep=k > 0) for k, t in enumerate(textwrap.wrap(f"[{n}] {reason}", LINE_CHARS))]
    return lines


def _paginate(lines: Sequence[_Line], height: float) -> list[list[_Line]]:
    """Split lines into pages of ``height`` points; kept lines move with the line before them."""
    blocks: list[list[_Line]] = []
    for line in lines:
        if line.keep and blocks:
            blocks[-1].append(line)
        else:
            blocks.append([line])
    pages: list[list[_Line]] = [[]]
    used = 0.0
    for n, block in enumerate(blocks):
        need = sum(line.height for line in block)
        heading = block[0].bold and block[0].size > BODY_PT and n + 1 < len(blocks)
        extra = sum(line.height for line in blocks[n + 1]) if heading else 0.0  # no heading alone at the foot
        if pages[-1] and used + need + extra > height:
            pages.append([])
            used = 0.0
        if not pages[-1] and not any(line.text for line in block):
            continue  # no blank lines at the top of a page
        pages[-1].extend(block)
        used += need
    return pages


def _stamp(figure: Figure, content: ReportContent, page: int, total: int) -> list[Text]:
    """Footer on ``figure`` (who, what, page); returns the artists, to remove after saving."""
    y = MARGIN / 2 / figure.get_figheight()
    style: dict[str, Any] = {"fontsize": 7, "color": "#444", "parse_math": False, "va": "center"}
    who = f"{content.identity} · {content.title} · {content.generator}"
    return [figure.text(0.03, y, who, ha="left", **style), figure.text(0.97, y, f"Page {page} of {total}",
                                                                        ha="right", **style)]


def _text_page(lines: Sequence[_Line]) -> Figure:
    figure = Figure(figsize=PAGE_SIZE)
    width, height = PAGE_SIZE
    y = 1 - (MARGIN + 0.15) / height
    for line in lines:
        y -= line.height / 72 / height
        figure.text(MARGIN / width, y, line.text, family="DejaVu Sans Mono", fontsize=line.size,
                    fontweight="bold" if line.bold else "normal", va="baseline", parse_math=False)
    return figure


def _pages(content: ReportContent, figures: Sequence[ReportFigure]) -> Iterator[Figure]:
    yield from (f.figure for f in figures)
    figure_pages = {f.key: n + 1 for n, f in enumerate(figures)}
    usable = (PAGE_SIZE[1] - 2 * MARGIN - 0.3) * 72
    for page in _paginate(_document_lines(content, figure_pages), usable):
        yield _text_page(page)


def write_pdf(path: Path, content: ReportContent, figures: Sequence[ReportFigure]) -> int:
    """Write the PDF report to ``path`` (not atomic: pass a temporary path).

    Parameters
    ----------
    path : pathlib.Path
        Destination, usually from :func:`mriquant.io.write.atomic_path`.
    content : ReportContent
        Tables and notes, typeset after the figures.
    figures : sequence of ReportFigure
        One page each, in order.

    Returns
    -------
    int
        Number of pages written.

    """
    pages = list(_pages(content, figures))
    metadata = {"Title": f"{content.title} — {content.identity}", "Creator": content.generator}
    with PdfPages(path, metadata=metadata) as pdf:
        for number, page in enumerate(pages, start=1):
            stamps = _stamp(page, content, number, len(pages))
            _reserve_margins(page, 0.3)
            pdf.savefig(page)
            _reserve_margins(page, 0.0)
            for artist in stamps:
                artist.remove()
    return len(pages)


def _reserve_margins(figure: Figure, inches: float) -> None:
    """Keep a constrained-layout figure ``inches`` clear of its bottom edge (for the footer)."""
    engine = figure.get_layout_engine()
    if isinstance(engine, ConstrainedLayoutEngine):
        margin = inches / figure.get_figheight()
        engine.set(rect=(0.0, margin, 1.0, 1.0 - margin))
