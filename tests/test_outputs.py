"""Every public output file is named once, in mriquant.core.outputs, and described there."""

from __future__ import annotations

import re
from pathlib import Path

from mriquant.core import outputs

SRC = Path(__file__).resolve().parents[1] / "src" / "mriquant"
WRITERS = ("pipeline.py", "cli.py", "report/__init__.py", "export/dicom.py")


def test_every_name_is_described() -> None:
    names = {v for k, v in vars(outputs).items() if k.isupper() and isinstance(v, str) and k != "TO_MNI"}
    assert names | {f"{outputs.TO_MNI}.json"} == set(outputs.DESCRIPTIONS)


def test_writers_take_names_from_the_module() -> None:
    """No writer spells a public file name itself (a new output file is one line in core/outputs.py)."""
    alternatives = "|".join(re.escape(n) for n in outputs.DESCRIPTIONS)
    literal = re.compile(f'"({alternatives})"')
    found = {w: literal.findall((SRC / w).read_text()) for w in WRITERS}
    assert found == {w: [] for w in WRITERS}
