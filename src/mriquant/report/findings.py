"""Key findings: the headline volumes with their normalised values, adult ranges and QC flags.

This is what a radiologist reads first (page 1 of the PDF, the first section of the HTML): the
intracranial volume, brain parenchyma, grey and white matter, CSF, both hippocampi and both lateral
ventricles, each with its percentage of the intracranial volume, the adult range QC checks it against,
the left/right asymmetry of the pairs and every QC flag raised on it; then a summary of the other QC
flags and of the image-quality metrics.

Every number comes from ``volumes.json`` and its ``qc`` section as they are; nothing is recomputed
except ``volume / eTIV`` where ``fraction_of_etiv`` is not stored.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from mriquant.report.cells import Badge, Cell
from mriquant.report.html import Section, Table, ml, number

__all__ = ["HEADLINES", "Headline", "findings_section", "findings_table", "serious_flags_table"]

_SEVERITY_RANK = {"error": 0, "warning": 1, "info": 2}
#: Short words for a flag's code in the findings table (the full message is in the QC section).
_SHORT = {
    "fragmented": "fragmented",
    "missing_structure": "missing",
    "low_confidence": "low confidence",
    "left_right_swap": "left/right swapped",
    "empty_mask": "empty mask",
}
#: Most QC messages listed under the table (the rest are counted).
MAX_LISTED_FLAGS = 8


@dataclass(frozen=True)
class Headline:
    """One row of the findings table.

    Attributes
    ----------
    title : str
        Row title.
    table : str
        Label map the value and its QC flags belong to: ``"brain_mask"``, ``"tissues"`` or ``"freesurfer"``
        (``""``: a derived total without its own check).
    label : int or None
        Label id in ``table``.
    key : str
        ``volumes.json`` key of a whole-head value (``"etiv_ml"``, ``"tissues.parenchyma_ml"``); ``""`` for
        a structure, read from ``structures`` by ``label``.

    """

    title: str
    table: str
    label: int | None
    key: str = ""


#: The headline rows, in reading order.
HEADLINES = (
    Headline("Intracranial volume (eTIV)", "brain_mask", 1, "etiv_ml"),
    Headline("Brain parenchyma (GM + WM)", "", None, "tissues.parenchyma_ml"),
    Headline("Grey matter", "tissues", 2, "tissues.gm_ml"),
    Headline("White matter", "tissues", 3, "tissues.wm_ml"),
    Headline("CSF (all, tissue map)", "tissues", 1, "tissues.csf_ml"),
    Headline("Left hippocampus", "freesurfer", 17),
    Headline("Right hippocampus", "freesurfer", 53),
    Headline("Left lateral ventricle", "freesurfer", 4),
    Headline("Right lateral ventricle", "freesurfer", 43),
)


def _lookup(volumes: Mapping[str, Any], key: str) -> tuple[Any, str]:
    """Value of a dotted ``volumes.json`` key and why it may be missing."""
    section, _, name = key.rpartition(".")
    source = volumes.get(section) if section else volumes
    if not isinstance(source, Mapping):
        return None, str(volumes.get(f"{section}_reason") or f"no {section} in volumes.json")
    reason = source.get("reason") if section else volumes.get(name.removesuffix("_ml") + "_reason")
    return source.get(name), str(reason or "not measured")


def _structure(volumes: Mapping[str, Any], label: int) -> Mapping[str, Any] | None:
    return next((s for s in volumes.get("structures") or [] if s.get("label") == label), None)


def _stored(volumes: Mapping[str, Any], row: Headline) -> tuple[Any, float | None, str]:
    """``row``'s volume (mL), its stored fraction of eTIV and why the volume may be undefined."""
    if row.key:
        value, reason = _lookup(volumes, row.key)
        return value, _tissue_fraction(volumes, row), reason
    found = _structure(volumes, row.label or 0)
    if found is None:
        return None, None, str(volumes.get("structures_reason") or "not in the structure map")
    fraction = found.get("fraction_of_etiv")
    return (found.get("volume_ml"), float(fraction) if isinstance(fraction, int | float) else None,
            str(found.get("reason") or "not measured"))


def _volume_and_fraction(volumes: Mapping[str, Any], row: Headline) -> tuple[Cell, Cell, float | None]:
    """Volume cell, % of eTIV cell and the volume as a number (None when undefined)."""
    value, fraction, reason = _stored(volumes, row)
    numeric = float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None
    etiv = volumes.get("etiv_ml")
    if fraction is None and numeric is not None and isinstance(etiv, int | float) and etiv:
        fraction = numeric / etiv
    percent: Cell = ""  # the eTIV row: 100 % by definition
    if row.key != "etiv_ml":
        etiv_reason = str(volumes.get("etiv_reason") or "intracranial volume (eTIV) not available")
        percent = number(None if fraction is None else 100.0 * fraction, 2,
                         missing=reason if numeric is None else etiv_reason)
    return ml(value, missing=reason), percent, numeric


def _tissue_fraction(volumes: Mapping[str, Any], row: Headline) -> float | None:
    tissues = volumes.get("tissues")
    if row.key == "tissues.parenchyma_ml" and isinstance(tissues, Mapping):
        fraction = tissues.get("brain_parenchymal_fraction")
        return float(fraction) if isinstance(fraction, int | float) else None
    if row.table == "tissues":
        found = next((t for t in volumes.get("tissue_classes") or [] if t.get("label") == row.label), None)
        fraction = found.get("fraction_of_etiv") if found else None
        return float(fraction) if isinstance(fraction, int | float) else None
    return None


def _adult_range(row: Headline) -> tuple[float, float] | None:
    from mriquant.quantify.qc import adult_ranges

    found = next((r for r in adult_ranges() if r.table == row.table and r.label == row.label), None)
    return (found.min_ml, found.max_ml) if found else None


def _flags_of(qc: Mapping[str, Any] | None, row: Headline) -> list[Mapping[str, Any]]:
    """QC flags raised on ``row``'s label (flags without a ``table`` are structure-map flags)."""
    if qc is None or row.label is None:
        return []
    return [f for f in qc.get("flags") or []
            if f.get("label") == row.label and (f.get("table") or "freesurfer") == row.table]


def _flag_cell(flags: Sequence[Mapping[str, Any]], volume: float | None, limits: tuple[float, float] | None) -> Cell:
    """The flags as one badge (most severe level), or whether the volume lies in its adult range."""
    if not flags:
        inside = volume is not None and limits is not None and limits[0] <= volume <= limits[1]
        return "within adult range" if inside else ""
    words = []
    for f in sorted(flags, key=lambda f: _SEVERITY_RANK.get(str(f.get("severity")), 1)):
        code = str(f.get("code", ""))
        short = _SHORT.get(code, code.replace("_", " "))
        if code == "volume_out_of_range" and volume is not None and limits is not None:
            short = "above adult range" if volume > limits[1] else "below adult range"
        words.append(f"{f.get('severity', 'warning')}: {short}")
    level = min((str(f.get("severity")) for f in flags), key=lambda s: _SEVERITY_RANK.get(s, 1))
    return Badge("; ".join(words), level if level in _SEVERITY_RANK else "warning")


def _asymmetry(volumes: Mapping[str, Any], row: Headline) -> Cell:
    """Asymmetry index of a structure-map pair (the pairs are FreeSurfer ids), else empty."""
    if row.table != "freesurfer" or row.label is None:
        return ""
    for pair in volumes.get("asymmetry") or []:
        if row.label in (pair.get("left_label"), pair.get("right_label")):
            return number(pair.get("asymmetry_index"), 3, missing=str(pair.get("reason") or "both sides are empty"))
    return ""


def findings_table(volumes: Mapping[str, Any], qc: Mapping[str, Any] | None) -> Table:
    """The headline volumes: volume, % of eTIV, adult range, asymmetry and QC flags per row."""
    rows: list[tuple[Cell, ...]] = []
    for row in HEADLINES:
        volume, percent, value = _volume_and_fraction(volumes, row)
        limits = _adult_range(row)
        span = f"{limits[0]:g}-{limits[1]:g}" if limits else ""
        rows.append((row.title, volume, percent, span, _asymmetry(volumes, row),
                     _flag_cell(_flags_of(qc, row), value, limits)))
    columns = ("Measure", "Volume (mL)", "% of eTIV", "Range (mL)", "Asymmetry", "Flag")
    notes = ["% of eTIV = volume / intracranial volume (eTIV: the brain mask's volume, GM + WM + CSF). Range: "
             "the wide adult envelope QC checks against, to catch gross segmentation failures, not disease. "
             "Asymmetry = (left - right) / mean of the two."]
    notes += _qc_notes(qc)
    return Table("findings", "Headline volumes", columns, tuple(rows), frozenset({1, 2, 3, 4}), tuple(notes))


def _qc_notes(qc: Mapping[str, Any] | None) -> list[str]:
    """The count of QC flags by severity and one sentence of image-quality metrics."""
    if qc is None:
        return ["No quality-control results were given: these volumes are unchecked."]
    flags = qc.get("flags") or []
    counts = {level: sum(1 for f in flags if f.get("severity") == level) for level in _SEVERITY_RANK}
    notes = [f"Quality control: {counts['error']} error(s), {counts['warning']} warning(s), {counts['info']} "
             "note(s); each with its reason in the Quality control section." if flags
             else "Quality control: no flags raised."]
    quality = _quality_note(qc)
    return notes + ([quality] if quality else [])


def serious_flags_table(qc: Mapping[str, Any] | None) -> Table | None:
    """The error and warning messages, most severe first (at most :data:`MAX_LISTED_FLAGS`); None without any."""
    flags = sorted(qc.get("flags") or [] if qc else [], key=lambda f: _SEVERITY_RANK.get(str(f.get("severity")), 1))
    serious = [f for f in flags if f.get("severity") in ("error", "warning")]
    if not serious:
        return None
    rows = tuple((Badge(str(f["severity"]), str(f["severity"])), str(f.get("message", "")))
                 for f in serious[:MAX_LISTED_FLAGS])
    notes = (f"... and {len(serious) - MAX_LISTED_FLAGS} more errors and warnings in the Quality control section.",
             ) if len(serious) > MAX_LISTED_FLAGS else ()
    return Table("findings-flags", "Quality-control errors and warnings", ("Severity", "Finding"), rows, notes=notes)


def _mapping(value: Any) -> Mapping[str, Any]:
    return value if isinstance(value, Mapping) else {}


def _quality_note(qc: Mapping[str, Any]) -> str | None:
    """One sentence with the image-quality metrics (SNR, CNR, registration correlation) that were measured."""
    metrics = _mapping(qc.get("metrics"))
    registration = _mapping(metrics.get("registration"))
    parts = [f"{name} {value:.{digits}f}" for name, value, digits in (
        ("signal-to-noise ratio", metrics.get("snr"), 1),
        ("grey/white contrast-to-noise ratio", metrics.get("cnr_gm_wm"), 1),
        ("registration correlation with the template", registration.get("ncc"), 3),
    ) if isinstance(value, int | float)]
    return "Image quality: " + ", ".join(parts) + "." if parts else None


def findings_section(volumes: Mapping[str, Any], qc: Mapping[str, Any] | None) -> Section:
    """The key-findings section: the headline table, then the QC errors and warnings.

    Parameters
    ----------
    volumes : mapping
        Content of ``volumes.json``.
    qc : mapping, optional
        ``volumes.json``'s ``qc``: ``{"metrics", "flags"}``.

    Returns
    -------
    Section
        Key ``"findings"``.

    """
    tables = [findings_table(volumes, qc), serious_flags_table(qc)]
    return Section("findings", "Key findings", tuple(t for t in tables if t is not None))
