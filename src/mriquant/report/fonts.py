r"""Fonts of the PDF and the figures: text in any script without missing glyphs.

matplotlib ships DejaVu fonts, which have no CJK (Chinese, Japanese, Korean) glyphs: a patient name
or an input path such as ``/data/脑扫描/t1.nii.gz`` used to print one warning per character on stderr
and empty boxes in the PDF. Two remedies, in order:

1. A fallback font with those glyphs, when one is installed: matplotlib draws each character with the
   first font of the family list that has it. Only TrueType-outline fonts are listed (matplotlib embeds
   those in a PDF; OpenType/CFF fonts such as Noto Sans CJK it cannot). Debian: ``fonts-droid-fallback``.
   The font is registered with matplotlib's font manager (an addition; no default is changed).
2. Characters that no available font has are written as ``\uXXXX`` escapes (their Unicode code points,
   as in JSON), so the text stays exact and readable, and nothing is printed on stderr.

The HTML report needs neither: the browser picks its fonts.

Examples
--------
>>> safe_text("scan.nii.gz", "DejaVu Sans")
'scan.nii.gz'

"""

from __future__ import annotations

import unicodedata
from collections.abc import Iterator
from contextlib import contextmanager
from functools import cache
from pathlib import Path

__all__ = ["CJK_FONTS", "ESCAPE_NOTE", "MONO", "SANS", "cjk_family", "display_width", "families", "fonts_context",
           "safe_text"]

#: Fonts of the report (both ship with matplotlib).
MONO = "DejaVu Sans Mono"
SANS = "DejaVu Sans"
#: TrueType fonts with CJK glyphs that matplotlib can embed in a PDF: family name and where it is installed.
CJK_FONTS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("Droid Sans Fallback", ("/usr/share/fonts/truetype/droid/DroidSansFallbackFull.ttf",  # fonts-droid-fallback
                             "/usr/share/fonts-droid-fallback/truetype/DroidSansFallback.ttf")),
)
#: Explanation printed when some characters had to be escaped.
ESCAPE_NOTE = ("Characters that the PDF's fonts cannot draw are written as \\uXXXX (their Unicode code points); "
               "the HTML report shows them as text.")


@cache
def cjk_family() -> str | None:
    """Family name of an installed CJK fallback font (registered with matplotlib), or None."""
    from matplotlib import font_manager

    known = {entry.name: entry.fname for entry in font_manager.fontManager.ttflist}
    for family, paths in CJK_FONTS:
        path = known.get(family) or next((p for p in paths if Path(p).is_file()), None)
        if path is not None and path.lower().endswith(".ttf"):
            _register(path)
            return family
    return None


def _register(path: str) -> None:
    """Make the font at ``path`` known to matplotlib, also as its bold face.

    These fallback fonts come in one weight; without a bold entry matplotlib logs "Failed to find font
    weight bold" on every bold line. The bold entry draws the same (regular) glyphs.
    """
    import dataclasses

    from matplotlib import font_manager

    entries = font_manager.fontManager.ttflist
    if not any(e.fname == path for e in entries):
        font_manager.fontManager.addfont(path)
    regular = next(e for e in entries if e.fname == path)
    if not any(e.fname == path and e.weight in (700, "bold") for e in entries):
        entries.append(dataclasses.replace(regular, weight=700))


def families(base: str) -> list[str]:
    """Font family list for matplotlib: ``base``, then the CJK fallback when one is installed."""
    fallback = cjk_family()
    return [base] if fallback is None else [base, fallback]


@cache
def _coverage(family: str) -> frozenset[int]:
    """Code points ``family`` has glyphs for."""
    from matplotlib import font_manager
    from matplotlib.ft2font import FT2Font

    path = font_manager.findfont(font_manager.FontProperties(family=family), fallback_to_default=False)
    return frozenset(FT2Font(path).get_charmap())


def _drawable(base: str) -> frozenset[int]:
    return frozenset().union(*(_coverage(f) for f in families(base)))


def safe_text(text: str, base: str) -> str:
    r"""``text`` with every character that ``base`` and the fallback font lack written as ``\uXXXX``.

    Whitespace and control characters are kept as they are (they draw no glyph).
    """
    if text.isascii():
        return text
    drawable = _drawable(base)
    return "".join(c if ord(c) in drawable or not c.isprintable() or c.isspace() else _escape(c) for c in text)


def _escape(char: str) -> str:
    code = ord(char)
    return f"\\u{code:04x}" if code <= 0xFFFF else f"\\U{code:08x}"


def display_width(text: str) -> int:
    """Monospace columns ``text`` takes: East Asian wide and full-width characters count two."""
    if text.isascii():
        return len(text)
    return sum(2 if unicodedata.east_asian_width(c) in "WF" else 1 for c in text)


@contextmanager
def fonts_context() -> Iterator[None]:
    """Settings of matplotlib for figures built inside: sans text with the CJK fallback when installed."""
    import matplotlib

    with matplotlib.rc_context({"font.family": families(SANS)}):
        yield
