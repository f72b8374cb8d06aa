r"""The PDF report: a first page with the key findings, the figure pages, then the tables on A4 pages.

Page 1 is A4 portrait and holds what a radiologist reads: the title, a few patient and scan fields, the
headline volumes with their normalised values, adult ranges and QC flags, and the QC errors and warnings.
The figures follow on their own pages, then every table in monospace on A4 portrait pages.

Everything is drawn by matplotlib (``PdfPages``), so no browser is needed. The tables are the
same :class:`~mriquant.report.html.ReportContent` the HTML shows; an undefined value reads
``— [n]`` and note *n* at the end gives the reason. Long cells wrap inside their column. Rows with a
QC error or warning are drawn in red or dark orange. Text in scripts the bundled fonts lack (a Chinese
patient name or folder, say) uses an installed fallback font or is written as ``\uXXXX``
(:mod:`mriquant.report.fonts`), never as missing glyphs.
"""

from __future__ import annotations

import dataclasses
import textwrap
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from matplotlib.backends.backend_pdf import PdfPages
from matplotlib.figure import Figure
from matplotlib.layout_engine import ConstrainedLayoutEngine
from matplotlib.text import Text

from mriquant.report.cells import Badge, Cell
from mriquant.report.figures import ReportFigure
from mriquant.report.fonts import ESCAPE_NOTE, MONO, SANS, display_width, families, safe_text
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
#: Text colour of a table row that carries a QC badge of this level.
LEVEL_COLOURS = {"error": "#b00020", "warning": "#8f5000"}
_GAP = "  "


@dataclass(frozen=True)
class _Line:
    """One typeset line; ``keep`` lines stay on the page of the line before them."""

    text: str
    size: float = BODY_PT
    bold: bool = False
    keep: bool = False
    lead: float = 1.4
    colour: str = "black"

    @property
    def height(self) -> float:
        """Line height in points."""
        return self.size * self.lead


def _pad(text: str, width: int, *, right: bool) -> str:
    """``text`` padded with spaces to ``width`` monospace columns (wide characters count two)."""
    gap = " " * max(0, width - display_width(text))
    return gap + text if right else text + gap


def _column_widths(table: Table, texts: Sequence[Sequence[str]]) -> list[int]:
    """Natural column widths, the widest squeezed until the table fits :data:`LINE_CHARS`."""
    widths = [max([display_width(h), *(display_width(row[c]) for row in texts)]) for c, h in enumerate(table.columns)]
    budget = LINE_CHARS - len(_GAP) * (len(widths) - 1)
    while sum(widths) > budget and max(widths) > MIN_COLUMN:
        widest = widths.index(max(widths))
        widths[widest] = max(MIN_COLUMN, widths[widest] - max(1, sum(widths) - budget))
    return widths


def _row_lines(cells: Sequence[str], widths: Sequence[int], numeric: frozenset[int], *, bold: bool,
               colour: str = "black") -> list[_Line]:  # fmt: skip
    """One table row as lines; cells wrap within their column and the row's lines stay together."""
    wrapped = [textwrap.wrap(text, width, break_on_hyphens=False) or [""] for text, width in zip(cells, widths,
                                                                                                  strict=True)]
    lines = []
    for n in range(max(len(w) for w in wrapped)):
        parts = []
        for c, (chunks, width) in enumerate(zip(wrapped, widths, strict=True)):
            chunk = chunks[n] if n < len(chunks) else ""
            parts.append(_pad(chunk, width, right=c in numeric))
        lines.append(_Line(_GAP.join(parts).rstrip(), bold=bold, keep=n > 0, colour=colour))
    return lines


def _row_colour(row: Sequence[Cell]) -> str:
    """Colour of a row: that of its most severe QC badge, else black."""
    levels = {c.level for c in row if isinstance(c, Badge)}
    return next((LEVEL_COLOURS[level] for level in ("error", "warning") if level in levels), "black")


@dataclass
class _Typesetter:
    """Turns report content into lines; remembers whether any character had to be escaped."""

    footnotes: dict[str, int]
    figure_pages: dict[str, int] = field(default_factory=dict)
    escaped: bool = False

    def text(self, text: str) -> str:
        """``text`` drawable with the monospace fonts (see :func:`mriquant.report.fonts.safe_text`)."""
        safe = safe_text(text, MONO)
        self.escaped |= safe != text
        return safe

    def wrapped(self, text: str, **style: Any) -> list[_Line]:
        """A paragraph wrapped to the page width; its lines stay together."""
        chunks = textwrap.wrap(self.text(text), LINE_CHARS) or [""]
        return [_Line(t, keep=n > 0, **style) for n, t in enumerate(chunks)]

    def table(self, table: Table) -> list[_Line]:
        """A table: title, header, rule, rows (wrapped cells), notes; a short table stays on one page."""
        texts = [[self.text(cell_text(c, self.footnotes)) for c in row] for row in table.rows]
        columns = [self.text(c) for c in table.columns]
        widths = _column_widths(dataclasses.replace(table, columns=tuple(columns)), texts)
        lines = [_Line(self.text(table.title), size=9.0, bold=True)]
        header = _row_lines(columns, widths, table.numeric, bold=True)
        lines += [_Line(h.text, bold=True, keep=True) for h in header]
        lines.append(_Line("─" * min(LINE_CHARS, sum(widths) + len(_GAP) * (len(widths) - 1)), keep=True, lead=0.8))
        for row, cells in zip(texts, table.rows, strict=True):
            lines += _row_lines(row, widths, table.numeric, bold=False, colour=_row_colour(cells))
        for note in table.notes:
            lines += self.wrapped(note)
        if len(lines) <= KEEP_TABLE_LINES:  # a short table is never split across pages
            lines = [lines[0], *(dataclasses.replace(line, keep=True) for line in lines[1:])]
        lines.append(_Line(""))
        return lines

    def section(self, content: ReportContent, section: Section) -> list[_Line]:
        """A section: heading, notes, figure references, tables."""
        lines = [_Line(""), _Line(self.text(section.title), size=11.0, bold=True)]
        for note in section.notes:
            lines += self.wrapped(note)
        for key in section.figures:
            page = self.figure_pages.get(key)
            where = f", page {page}" if page else ""
            lines.append(_Line(self.text(f"Figure: {content.figures[key].title}{where}.")))
        for table in section.tables:
            lines += self.table(table)
        return lines


def _front_lines(content: ReportContent, setter: _Typesetter) -> list[_Line]:
    """Page 1: title, identity, a few patient and scan fields, then the key findings."""
    lines = [_Line(setter.text(content.title), size=16.0, bold=True, lead=1.3),
             _Line(setter.text(content.identity), size=11.0),
             _Line(setter.text(f"Written by {content.generator}. Automatic measurements: review before use."))]
    if content.brief is not None:
        lines += [_Line(""), *setter.table(content.brief)]
    for section in content.sections:
        if section.key == "findings":
            lines += setter.section(content, section)
    return lines


def _body_lines(content: ReportContent, setter: _Typesetter) -> list[_Line]:
    """The pages after the figures: every section but the key findings, then the notes."""
    lines: list[_Line] = []
    for section in content.sections:
        if section.key != "findings":
            lines += setter.section(content, section)
    reasons = [f"[{n}] {reason}" for reason, n in setter.footnotes.items()]
    if setter.escaped:
        reasons.append(ESCAPE_NOTE)
    if reasons:
        lines += [_Line(""), _Line("Notes", size=11.0, bold=True)]
        for text in reasons:
            lines += setter.wrapped(text)
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
    style: dict[str, Any] = {"fontsize": 7, "color": "#444", "parse_math": False, "va": "center",
                             "family": families(SANS)}
    who = safe_text(f"{content.identity} · {content.title} · {content.generator}", SANS)
    return [figure.text(0.03, y, who, ha="left", **style), figure.text(0.97, y, f"Page {page} of {total}",
                                                                        ha="right", **style)]


def _text_page(lines: Sequence[_Line]) -> Figure:
    figure = Figure(figsize=PAGE_SIZE)
    width, height = PAGE_SIZE
    y = 1 - (MARGIN + 0.15) / height
    family = families(MONO)
    for line in lines:
        y -= line.height / 72 / height
        figure.text(MARGIN / width, y, line.text, family=family, fontsize=line.size, color=line.colour,
                    fontweight="bold" if line.bold else "normal", va="baseline", parse_math=False)
    return figure


#: Height of a page's text area in points (the footer keeps 0.3 inch).
_USABLE_PT = (PAGE_SIZE[1] - 2 * MARGIN - 0.3) * 72
#: Resolution (dots per inch) of the overview picture on page 1.
THUMBNAIL_DPI = 150
#: Least height (inches) worth giving the overview picture.
MIN_THUMBNAIL_IN = 1.8


def _add_thumbnail(page: Figure, used_pt: float, thumbnail: ReportFigure) -> bool:
    """Draw ``thumbnail`` (rasterised) under the text of ``page`` when it fits; return whether it did.

    ``used_pt`` is the height of the page's text in points.
    """
    import io

    import matplotlib.image

    width, height = PAGE_SIZE
    top = MARGIN + 0.15 + used_pt / 72 + 0.1  # inches from the page top
    room = height - top - MARGIN - 0.3
    fig_w, fig_h = thumbnail.figure.get_size_inches()
    shown_w = min(width - 2 * MARGIN, room * fig_w / fig_h)
    shown_h = shown_w * fig_h / fig_w
    if shown_h < MIN_THUMBNAIL_IN:
        return False
    buffer = io.BytesIO()
    thumbnail.figure.savefig(buffer, format="png", dpi=THUMBNAIL_DPI, facecolor="white")
    buffer.seek(0)
    pixels = matplotlib.image.imread(buffer, format="png")
    axes = page.add_axes(((width - shown_w) / 2 / width, 1 - (top + shown_h) / height, shown_w / width,
                          shown_h / height))
    axes.imshow(pixels, interpolation="none")  # "none": embedded at its own resolution, not resampled
    axes.set_axis_off()
    return True


def _pages(content: ReportContent, figures: Sequence[ReportFigure],
           thumbnail: ReportFigure | None) -> Iterator[Figure]:  # fmt: skip
    """Page 1 (and its overflow; the overview picture under the text when it fits), the figures, the tables."""
    setter = _Typesetter(content.footnotes())
    front = _paginate(_front_lines(content, setter), _USABLE_PT)
    setter.figure_pages = {f.key: len(front) + n + 1 for n, f in enumerate(figures)}
    body = _paginate(_body_lines(content, setter), _USABLE_PT)
    pages = [_text_page(page) for page in front]
    if thumbnail is not None and len(front) == 1:
        _add_thumbnail(pages[0], sum(line.height for line in front[0]), thumbnail)
    yield from pages
    yield from (f.figure for f in figures)
    yield from (_text_page(page) for page in body)


def write_pdf(path: Path, content: ReportContent, figures: Sequence[ReportFigure], *,
              thumbnail: ReportFigure | None = None) -> int:  # fmt: skip
    """Write the PDF report to ``path`` (not atomic: pass a temporary path).

    Parameters
    ----------
    path : pathlib.Path
        Destination, usually from :func:`mriquant.io.write.atomic_path`.
    content : ReportContent
        Key findings (page 1) and the other tables and notes (after the figures).
    figures : sequence of ReportFigure
        One page each, in order, after page 1.
    thumbnail : ReportFigure, optional
        A compact overview of the scan, drawn on page 1 under the key findings when there is room.

    Returns
    -------
    int
        Number of pages written.

    """
    pages = list(_pages(content, figures, thumbnail))
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
