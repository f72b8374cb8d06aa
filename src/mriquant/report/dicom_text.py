r"""DICOM header values as a reader expects them: dates, times, ages, names and lists spelled out.

The reader stores each header field as DICOM's own string (``"20210902"``, ``"121816"``, ``"041Y"``,
``"Doe^Jane"``, multiple values joined by a backslash). :func:`format_value` turns one of them into
display text using the field's value representation (VR) from pydicom's data dictionary and pydicom's
value types; a value that does not parse is shown as given, never dropped or guessed.

Examples
--------
>>> format_value("StudyTime", "121816"), format_value("PatientAge", "041Y")
('12:18:16', '41 years')
>>> format_value("SoftwareVersions", "5.7.1\\5.7.1.1"), format_value("StudyDate", "20210902")
('5.7.1, 5.7.1.1', '2021-09-02')

"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from typing import Any

__all__ = ["format_value", "person_name"]

#: DICOM age units (AS value representation: ``nnnD``, ``nnnW``, ``nnnM``, ``nnnY``).
_AGE_UNITS = {"D": "day", "W": "week", "M": "month", "Y": "year"}
#: Coded values of CS fields a reader should not have to decode.
_CODES: dict[str, dict[str, str]] = {
    "PatientSex": {"M": "male", "F": "female", "O": "other"},
}


def _vr(keyword: str) -> str | None:
    from pydicom.datadict import dictionary_VR

    try:
        return str(dictionary_VR(keyword))
    except KeyError:
        return None


def _date(value: str) -> str:
    from pydicom.valuerep import DA

    parsed = DA(value)
    return parsed.isoformat() if parsed is not None else value


def _time(value: str) -> str:
    """``HHMMSS.FFFFFF`` (or ``HHMM``, ``HH``) as ``HH:MM:SS`` / ``HH:MM``; fractions of a second dropped."""
    from pydicom.valuerep import TM

    parsed = TM(value)
    if parsed is None:
        return value
    digits = len(value.split(".")[0].replace(":", ""))
    return parsed.strftime("%H:%M:%S" if digits >= 6 else "%H:%M")


def _datetime(value: str) -> str:
    from pydicom.valuerep import DT

    parsed = DT(value)
    return parsed.isoformat(sep=" ") if parsed is not None else value


def _age(value: str) -> str:
    """``"041Y"`` -> ``"41 years"``, ``"001M"`` -> ``"1 month"``."""
    found = re.fullmatch(r"(\d{1,3})([DWMY])", value.strip().upper())
    if found is None:
        return value
    number = int(found[1])
    unit = _AGE_UNITS[found[2]]
    return f"{number} {unit}{'' if number == 1 else 's'}"


def person_name(value: str) -> str:
    """A DICOM person name (PN, ``Family^Given^Middle^Prefix^Suffix``) as ``"Family, Prefix Given Middle, Suffix"``.

    Examples
    --------
    >>> person_name("Doe^Jane"), person_name("Doe^Jane^M^Dr"), person_name("ANONYMOUS")
    ('Doe, Jane', 'Doe, Dr Jane M', 'ANONYMOUS')

    """
    from pydicom.valuerep import PersonName

    name = PersonName(value)
    given = " ".join(p for p in (name.name_prefix, name.given_name, name.middle_name) if p)
    text = ", ".join(p for p in (name.family_name, given, name.name_suffix) if p)
    return text or value


def _uid(value: str) -> str:
    """A SOP class UID as its name (``"MR Image Storage"``); other UIDs as given."""
    from pydicom.uid import UID

    name = UID(value).name
    return name if name != value else value


_BY_VR: dict[str, Callable[[str], str]] = {
    "DA": _date,
    "TM": _time,
    "DT": _datetime,
    "AS": _age,
    "PN": person_name,
}


def _one(keyword: str, vr: str | None, value: str) -> str:
    if keyword in _CODES:
        return _CODES[keyword].get(value.upper(), value)
    if keyword.endswith("ClassUID"):
        return _uid(value)
    convert = _BY_VR.get(vr or "")
    if convert is None:
        return value
    try:
        return convert(value)
    except (ValueError, TypeError, OverflowError):
        return value  # not a valid value of its VR: shown as stored


def format_value(keyword: str, value: Any) -> str:
    r"""Display text of the header field ``keyword`` (a DICOM keyword, e.g. ``"StudyTime"``).

    Parameters
    ----------
    keyword : str
        DICOM keyword; its VR decides the formatting (unknown keywords are shown as given).
    value : str or sequence of str
        The stored value: DICOM's string form, multiple values joined by ``\``, or a sequence of values.

    Returns
    -------
    str
        Dates ``YYYY-MM-DD``, times ``HH:MM:SS``, ages ``"41 years"``, names ``"Family, Given"``, sex
        spelled out, SOP class UIDs by name, multiple values joined by ``", "``.

    """
    if isinstance(value, Sequence) and not isinstance(value, str | bytes):
        parts = [str(v).strip() for v in value]
    else:
        parts = str(value).strip().split("\\")
    vr = _vr(keyword)
    return ", ".join(_one(keyword, vr, part) for part in parts if part)
