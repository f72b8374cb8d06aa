"""The report's content (sections of tables) and its self-contained HTML rendering.

The content model is shared by the HTML and the PDF writers, so both show the same numbers.
A cell is text, a colour swatch, a severity badge or :class:`Missing`: an undefined value with
its reason, shown as "—" with the reason as a tooltip and a numbered note, never as 0.

The HTML is one file: inline CSS, figures as base64 PNG data URIs, no scripts, fonts, external
images or links. Every text comes through jinja2 with autoescape on.
"""

from __future__ import annotations

import json
import math
import numbers
import re
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jinja2
import numpy as np

from mriquant.core.image import Image
from mriquant.core.labels import TISSUES, freesurfer
from mriquant.report.cells import Badge, Cell, Missing, Swatch
from mriquant.report.dicom_text import format_value
from mriquant.report.figures import ReportFigure, label_rgb

#: The dash shown for an undefined value.
DASH = "—"




@dataclass(frozen=True)
class Table:
    """A titled table of cells.

    Attributes
    ----------
    key : str
        Identifier (HTML id), e.g. ``"structures"``.
    title : str
        Caption.
    columns : tuple of str
        Column headers.
    rows : tuple of tuple of Cell
        One tuple per row, one cell per column.
    numeric : frozenset of int
        Columns aligned right.
    notes : tuple of str
        Sentences printed under the table.

    """

    key: str
    title: str
    columns: tuple[str, ...]
    rows: tuple[tuple[Cell, ...], ...]
    numeric: frozenset[int] = frozenset()
    notes: tuple[str, ...] = ()


@dataclass(frozen=True)
class Section:
    """A report section: notes, figures (by key) and tables, in that order."""

    key: str
    title: str
    tables: tuple[Table, ...] = ()
    notes: tuple[str, ...] = ()
    figures: tuple[str, ...] = ()


@dataclass(frozen=True)
class ReportContent:
    """Everything the report shows, independent of the output format.

    Attributes
    ----------
    title : str
        Document title.
    identity : str
        Who or what the report is about (patient name and ID, or the file name); printed on every page.
    sections : tuple of Section
        In reading order.
    generator : str
        ``"mriquant <version>"`` of the code that wrote the report.
    figures : dict of str to ReportFigure
        The figures the sections name, by key.
    brief : Table or None
        A few patient and scan fields for the PDF's first page (:func:`brief_table`); the full header
        table is in the sections.

    """

    title: str
    identity: str
    sections: tuple[Section, ...]
    generator: str
    figures: dict[str, ReportFigure] = field(default_factory=dict)
    brief: Table | None = None

    def cells(self) -> Iterator[Cell]:
        """Every table cell, in reading order (the brief first)."""
        tables = [self.brief] if self.brief is not None else []
        tables += [table for section in self.sections for table in section.tables]
        for table in tables:
            for row in table.rows:
                yield from row

    def footnotes(self) -> dict[str, int]:
        """Number of each distinct reason of a :class:`Missing` cell, in order of first appearance."""
        numbers: dict[str, int] = {}
        for cell in self.cells():
            if isinstance(cell, Missing) and cell.reason not in numbers:
                numbers[cell.reason] = len(numbers) + 1
        return numbers


def cell_text(cell: Cell, footnotes: Mapping[str, int]) -> str:
    """Plain text of ``cell``; a missing value is ``"— [n]"`` with its note number."""
    if isinstance(cell, Missing):
        return f"{DASH} [{footnotes[cell.reason]}]"
    if isinstance(cell, Swatch | Badge):
        return cell.text
    return cell


# --- Formatting values ---


def number(value: Any, digits: int, *, missing: str) -> Cell:
    """``value`` with ``digits`` decimals, or :class:`Missing` (``missing`` is the reason) when undefined."""
    if value is None:
        return Missing(missing)
    if isinstance(value, bool | np.bool_) or not isinstance(value, numbers.Real):
        return str(value)
    if not math.isfinite(value):
        return Missing(f"{missing} (not a finite number)")
    return f"{float(value):.{digits}f}"


def ml(value: Any, *, missing: str = "not measured") -> Cell:
    """A volume in mL with two decimals (10 µL)."""
    return number(value, 2, missing=missing)


def scalar(value: Any) -> Cell:
    """A free-form value: numbers with 4 significant digits, containers as compact JSON."""
    if value is None:
        return Missing("not recorded")
    if isinstance(value, bool | str | np.bool_ | numbers.Integral):
        return str(value)
    if isinstance(value, numbers.Real):
        return f"{float(value):.4g}" if math.isfinite(value) else Missing("not a finite number")
    return json.dumps(value, separators=(", ", ": "), sort_keys=True, default=str)


def humanise(key: str) -> str:
    """``"PatientBirthDate"`` or ``"gm_ml"`` -> ``"Patient birth date"`` / ``"Gm ml"``."""
    words = re.sub(r"(?<=[a-z0-9])(?=[A-Z])", " ", key).replace("_", " ").split()
    text = " ".join(w if w.isupper() and len(w) > 1 else w.lower() for w in words)
    return text[:1].upper() + text[1:]


# --- Header: patient and scan ---

#: Display names of the DICOM keywords a header commonly holds (others are humanised).
DICOM_LABELS: dict[str, str] = {
    "PatientName": "Patient name",
    "PatientID": "Patient ID",
    "PatientBirthDate": "Birth date",
    "PatientSex": "Sex",
    "PatientAge": "Age",
    "StudyDate": "Study date",
    "StudyTime": "Study time",
    "StudyDescription": "Study",
    "SeriesDescription": "Series",
    "InstitutionName": "Institution",
    "Manufacturer": "Manufacturer",
    "ManufacturerModelName": "Scanner model",
    "MagneticFieldStrength": "Field strength (T)",
    "PatientWeight": "Weight (kg)",
    "StudyID": "Study ID",
    "SeriesDate": "Series date",
    "SeriesTime": "Series time",
    "ProtocolName": "Protocol",
    "BodyPartExamined": "Body part",
    "SoftwareVersions": "Software versions",
    "ReferringPhysicianName": "Referring physician",
    "SOPClassUID": "Image type (SOP class)",
}


def header_table(image: Image, header: Mapping[str, str] | None) -> Table:
    """Patient and study fields that ``header`` holds (only those present), or the input file name.

    Values are formatted for reading by :func:`mriquant.report.dicom_text.format_value` (dates, times, ages,
    names, lists). With ``header`` None, the DICOM fields the reader stored in ``image.meta["dicom"]`` are used;
    a non-DICOM input shows its file name only. Nothing is invented.
    """
    fields = header if header is not None else image.meta.get("dicom")
    rows: list[tuple[Cell, ...]] = []
    if isinstance(fields, Mapping) and fields:
        present = [k for k in fields if format_value(k, fields[k])]
        ordered = [k for k in DICOM_LABELS if k in present] + [k for k in present if k not in DICOM_LABELS]
        rows = [(DICOM_LABELS.get(k) or humanise(k), format_value(k, fields[k])) for k in ordered]
    if not rows:
        source = image.meta.get("source")
        rows = [("File", Path(str(source)).name if source else Missing("no file name recorded"))]
    return Table("header", "Patient and study", ("Field", "Value"), tuple(rows))


#: Header fields of the first page, in order (the rest, UIDs included, are in the full header table).
BRIEF_FIELDS = ("PatientName", "PatientID", "PatientBirthDate", "PatientAge", "PatientSex", "StudyDate",
                "StudyDescription", "SeriesDescription", "Manufacturer", "ManufacturerModelName",
                "MagneticFieldStrength")


def brief_table(image: Image, header: Mapping[str, str] | None) -> Table:
    """The first page's patient and scan lines: :data:`BRIEF_FIELDS` that are present, or the file name."""
    full = header_table(image, header)
    labels = {DICOM_LABELS.get(k) or humanise(k) for k in BRIEF_FIELDS}
    rows = tuple(r for r in full.rows if r[0] in labels or r[0] == "File")
    return Table("brief", "Patient and scan", full.columns, rows or full.rows[:1])


def identity(image: Image, header: Mapping[str, str] | None) -> str:
    """Short running header: patient name and ID when known, else the input file name."""
    fields = header if header is not None else image.meta.get("dicom")
    if isinstance(fields, Mapping):
        parts = [format_value(k, fields[k]) for k in ("PatientName", "PatientID") if k in fields]
        parts = [p for p in parts if p]
        if parts:
            return " · ".join(parts)
    source = image.meta.get("source")
    return Path(str(source)).name if source else "unnamed scan"


def geometry_table(image: Image, label: str = "Scan") -> Table:
    """Grid shape, voxel size and orientation of ``image``."""
    spacing = " × ".join(f"{s:.3g}" for s in image.spacing)
    rows: tuple[tuple[Cell, ...], ...] = (
        ("Grid (voxels)", " × ".join(str(n) for n in image.shape)),
        ("Voxel size (mm)", spacing),
        ("Orientation of the stored axes", image.axcodes),
    )
    return Table(f"geometry-{label.lower()}", f"{label} geometry", ("Property", "Value"), rows)


# --- Volumes ---

_TISSUE_ROWS = (
    ("csf_ml", "CSF", 1),
    ("gm_ml", "Grey matter", 2),
    ("wm_ml", "White matter", 3),
    ("parenchyma_ml", "Brain parenchyma (GM + WM, tissue map)", None),
    ("csf_pv_ml", "CSF, partial-volume estimate", None),
    ("gm_pv_ml", "Grey matter, partial-volume estimate", None),
    ("wm_pv_ml", "White matter, partial-volume estimate", None),
)


def _etiv_reason(volumes: Mapping[str, Any]) -> str:
    """Why a value relative to the intracranial volume is undefined."""
    if volumes.get("etiv_reason"):
        return str(volumes["etiv_reason"])
    if volumes.get("etiv_ml") is None:
        return "intracranial volume (eTIV) not available"
    return "not given in volumes.json"


#: Row titles of the structure-map totals (``volumes.json`` ``totals``).
_TOTAL_TITLES = {
    "parenchyma_ml": "Brain parenchyma (structure map)",
    "ventricles_ml": "Ventricles (structure map)",
    "grey_matter_structures_ml": "Grey-matter structures, summed (structure map)",
    "white_matter_structures_ml": "White-matter structures, summed (structure map)",
}
#: Why the atlas-scaling eTIV is shown and not used.
ETIV_AFFINE_NOTE = ("eTIV, atlas-scaling estimate: the template's intracranial volume divided by the scaling of "
                    "the registration to it (as FreeSurfer's eTIV); a cross-check only. Every % of eTIV and the "
                    "parenchymal fraction use the brain-mask eTIV above.")
#: Why the partial-volume tissue figures differ from the others.
PARTIAL_VOLUME_NOTE = ("Partial-volume estimates add up each tissue's probability in every voxel (a voxel on a "
                       "boundary counts partly to both tissues); the figures above them count every voxel wholly "
                       "as its most probable tissue. The two agree within a few percent.")
#: Why structure 24 (CSF) is much smaller than the tissue map's CSF.
CSF_LABEL_NOTE = ("Structure 24 CSF holds only the CSF the structure map labels as such (by the labelling protocol "
                  "of the method, often a small space near the brainstem), not all the CSF: the CSF of the whole "
                  "intracranial volume is the tissue map's CSF.")
#: Why the two parenchyma figures differ.
PARENCHYMA_NOTE = ("Brain parenchyma (tissue map) counts the voxels classified as grey or white matter; it is the "
                   "one used for the parenchymal fraction. Brain parenchyma (structure map) adds up every structure "
                   "label except ventricles, CSF, vessels and choroid plexus. The structure map is reconciled with "
                   "the tissue map (sulcal CSF is not cortex, subcortical nuclei are grey matter), so the two agree "
                   "within a few mL: the structure figure also holds the few CSF voxels inside the brain stem and "
                   "diencephalon, and misses grey or white matter that no structure claims.")


def tissue_table(volumes: Mapping[str, Any]) -> Table:
    """Intracranial volume (eTIV) with its method, tissue totals, parenchymal fraction and structure totals.

    The brain-mask eTIV is the headline (it normalises every value); the atlas-scaling estimate and the
    structure-map parenchyma are explained in the table's notes where they appear.
    """
    etiv_reason = _etiv_reason(volumes)
    rows: list[tuple[Cell, ...]] = [
        ("Intracranial volume (eTIV)", ml(volumes.get("etiv_ml"), missing=etiv_reason), "mL"),
        ("eTIV method", str(volumes.get("etiv_method") or "not recorded"), ""),
    ]
    notes: list[str] = []
    if "etiv_affine_ml" in volumes:
        reason = str(volumes.get("etiv_affine_reason") or "no transform to the template")
        rows.append(("eTIV, atlas-scaling estimate (cross-check, not used)",
                     ml(volumes.get("etiv_affine_ml"), missing=reason), "mL"))
        notes.append(ETIV_AFFINE_NOTE)
    tissues = volumes.get("tissues")
    if isinstance(tissues, Mapping):
        rows.extend(_tissue_rows(tissues))
        if any(key.endswith("_pv_ml") and tissues[key] is not None for key in tissues):
            notes.append(PARTIAL_VOLUME_NOTE)
    else:
        notes.append("No tissue segmentation was given: no tissue totals.")
    totals = volumes.get("totals")
    if isinstance(totals, Mapping):
        for key, value in totals.items():
            if key.endswith("_ml"):
                title = _TOTAL_TITLES.get(key) or f"{humanise(key.removesuffix('_ml'))} (structure map)"
                rows.append((title, ml(value), "mL"))
        if "parenchyma_ml" in totals and isinstance(tissues, Mapping):
            notes.append(PARENCHYMA_NOTE)
    return Table("tissues", "Intracranial volume and tissue totals", ("Measure", "Value", "Unit"),
                 tuple(rows), frozenset({1}), tuple(notes))


def _tissue_rows(tissues: Mapping[str, Any]) -> list[tuple[Cell, ...]]:
    reason = str(tissues.get("reason") or "not measured")
    rows: list[tuple[Cell, ...]] = []
    for key, name, label in _TISSUE_ROWS:
        if key in tissues:
            text: Cell = Swatch(name, TISSUES.by_id(label).rgb) if label else name
            rows.append((text, ml(tissues[key], missing=reason), "mL"))
    known = {key for key, _, _ in _TISSUE_ROWS}
    for key, value in tissues.items():
        if key.endswith("_ml") and key not in known:
            rows.append((humanise(key.removesuffix("_ml")), ml(value, missing=reason), "mL"))
    if "brain_parenchymal_fraction" in tissues:
        bpf = number(tissues["brain_parenchymal_fraction"], 3, missing=reason)
        rows.append(("Brain parenchymal fraction (GM + WM) / eTIV", bpf, "fraction"))
    return rows


def _asymmetry_by_label(volumes: Mapping[str, Any]) -> dict[int, Cell]:
    cells: dict[int, Cell] = {}
    for row in volumes.get("asymmetry") or []:
        reason = str(row.get("reason") or "both sides are empty")
        cell = number(row.get("asymmetry_index"), 3, missing=reason)
        for side in ("left_label", "right_label"):
            if isinstance(row.get(side), int):
                cells[row[side]] = cell
    return cells


def structure_table(volumes: Mapping[str, Any]) -> Table | None:
    """One row per structure: label, name, volume, partial-volume volume, % of eTIV, asymmetry index."""
    structures = volumes.get("structures")
    if not structures:
        return None
    with_pv = any(s.get("volume_pv_ml") is not None for s in structures)
    asym = _asymmetry_by_label(volumes)
    columns = ["Label", "Structure", "Volume (mL)"] + (["PV volume (mL)"] if with_pv else [])
    columns += ["% of eTIV", "Asymmetry index"]
    etiv_reason = _etiv_reason(volumes)
    rows: list[tuple[Cell, ...]] = []
    for s in structures:
        label = s.get("label")
        name = str(s.get("name") or (freesurfer().name_of(label) if isinstance(label, int) else "unnamed"))
        name_cell: Cell = Swatch(name, label_rgb(freesurfer(), label)) if isinstance(label, int) else name
        fraction = s.get("fraction_of_etiv")
        cells: list[Cell] = [str(label), name_cell, ml(s.get("volume_ml"), missing=str(s.get("reason") or
                                                                                       "not measured"))]
        if with_pv:
            cells.append(ml(s.get("volume_pv_ml"), missing="no posterior probabilities for this label"))
        cells.append(number(None if fraction is None else 100.0 * fraction, 3, missing=etiv_reason))
        cells.append(asym.get(label, "") if isinstance(label, int) else "")
        rows.append(tuple(cells))
    numeric = frozenset({0, *range(2, len(columns))})
    notes = ["Asymmetry index = (left − right) / mean of left and right, shown on both sides of each pair."]
    if any(s.get("label") == 24 for s in structures):
        notes.append(CSF_LABEL_NOTE)
    return Table("structures", "Structure volumes", tuple(columns), tuple(rows), numeric, tuple(notes))


def asymmetry_table(volumes: Mapping[str, Any]) -> Table | None:
    """Left and right volumes and asymmetry index of each bilateral pair."""
    pairs = volumes.get("asymmetry")
    if not pairs:
        return None
    rows = tuple(
        (str(p.get("structure", "")), ml(p.get("left_ml")), ml(p.get("right_ml")),
         number(p.get("asymmetry_index"), 3, missing=str(p.get("reason") or "both sides are empty")))
        for p in pairs
    )
    return Table("asymmetry", "Left/right asymmetry", ("Structure", "Left (mL)", "Right (mL)", "Asymmetry index"),
                 rows, frozenset({1, 2, 3}))


def volumes_section(volumes: Mapping[str, Any]) -> Section:
    """The tissue-totals, structure and asymmetry tables (each when its data is present)."""
    tables = [tissue_table(volumes), structure_table(volumes), asymmetry_table(volumes)]
    notes = [f"Volumes in {volumes.get('units', 'mL')}; — marks an undefined value (see the notes)."]
    if not volumes.get("structures"):
        notes.append("No structure segmentation (dseg) was given: no structure table.")
    return Section("volumes", "Volumes", tuple(t for t in tables if t is not None), tuple(notes))


# --- Longitudinal change ---


def change_section(change: Mapping[str, Any], figures: Sequence[str]) -> Section:
    """Interval, PBVC and the per-structure change table."""
    interval_reason = "interval between the scans unknown"
    annual_reason = interval_reason if change.get("interval_years") is None else "not given"
    summary = Table("change-summary", "Whole-brain change", ("Measure", "Value", "Unit"), (
        ("Interval between scans", number(change.get("interval_years"), 2, missing=interval_reason), "years"),
        ("Percentage brain volume change (PBVC)", number(change.get("pbvc_percent"), 2, missing="not measured"),
         "%"),
    ), frozenset({1}))
    rows: list[tuple[Cell, ...]] = []
    for s in change.get("structures") or []:
        label = s.get("label")
        name = str(s.get("name") or (freesurfer().name_of(label) if isinstance(label, int) else "unnamed"))
        rows.append((str(label), Swatch(name, label_rgb(freesurfer(), label)) if isinstance(label, int) else name,
                     ml(s.get("baseline_ml")), ml(s.get("followup_ml")), ml(s.get("change_ml")),
                     number(s.get("change_percent"), 2, missing=str(s.get("reason") or "percentage change undefined")),
                     number(s.get("annualised_percent"), 2, missing=annual_reason)))
    columns = ("Label", "Structure", "Baseline (mL)", "Follow-up (mL)", "Change (mL)", "Change (%)",
               "Annualised (%/year)")
    tables = [summary]
    if rows:
        tables.append(Table("change", "Structure volume change", columns, tuple(rows), frozenset({0, 2, 3, 4, 5, 6})))
    return Section("change", "Change between scans", tuple(tables), figures=tuple(figures))


# --- Quality control ---

_SEVERITY_ORDER = {"error": 0, "fail": 0, "critical": 0, "warning": 1, "warn": 1, "info": 2}


def _severity_level(severity: str) -> str:
    rank = _SEVERITY_ORDER.get(severity.lower(), 1)
    return ("error", "warning", "info")[rank]


def qc_section(qc: Mapping[str, Any] | None) -> Section:
    """QC metrics (readable name, value, unit) and flags (severity, code, label, message), most severe first."""
    from mriquant.report.qc_text import metric_rows as named_metric_rows

    if qc is None:
        return Section("qc", "Quality control", notes=("No quality-control results were given.",))
    metric_rows: list[tuple[Cell, ...]] = [
        (humanise(k), _plain(v), "") for k, v in qc.items()
        if k not in ("metrics", "flags") and not isinstance(v, Mapping)
    ]
    metrics = qc.get("metrics")
    if isinstance(metrics, Mapping):
        metric_rows += named_metric_rows(metrics)
    flags = sorted(qc.get("flags") or [], key=lambda f: _SEVERITY_ORDER.get(str(f.get("severity", "")).lower(), 1))
    flag_rows = tuple(
        (Badge(str(f.get("severity", "warning")), _severity_level(str(f.get("severity", "warning")))),
         str(f.get("code", "")), _flag_label(f.get("label"), f.get("table")), str(f.get("message", "")))
        for f in flags
    )
    tables = []
    if metric_rows:
        tables.append(Table("qc-metrics", "QC metrics", ("Metric", "Value", "Unit"), tuple(metric_rows),
                            frozenset({1})))
    notes = () if flag_rows else ("No QC flags were raised.",)
    if flag_rows:
        tables.append(Table("qc-flags", "QC flags", ("Severity", "Code", "Label", "Reason"), flag_rows))
    return Section("qc", "Quality control", tuple(tables), notes)


def _plain(value: Any) -> Cell:
    """A free-form value as text: numbers as :func:`scalar`, lists joined by commas (never JSON)."""
    if isinstance(value, list | tuple):
        return ", ".join(str(v) for v in value)
    return scalar(value)


def _flag_label(label: Any, table: Any = None) -> str:
    """A flag's label with its name from its map (``table``; structure map when not given)."""
    if isinstance(label, int) and not isinstance(label, bool):
        if table == "brain_mask":
            return "brain mask"
        names = TISSUES if table == "tissues" else freesurfer()
        return f"{label} {names.name_of(label)}"
    return "" if label is None else str(label)


# --- Provenance ---


def _manifest_version(manifest: Mapping[str, Any]) -> Cell:
    found = manifest.get("mriquant_version") or (manifest.get("versions") or {}).get("mriquant")
    return str(found) if found else Missing("not recorded in the manifest")


def _manifest_method(manifest: Mapping[str, Any]) -> Cell:
    """The segmentation method(s): ``parameters.method`` (``segment``), else the ``run`` pair.

    ``run`` records ``tissue_method`` and ``structure_method``; a tissue method alone that still gave
    structures (``structures`` true) is a dual method such as ``deep``.
    """
    parameters = manifest.get("parameters")
    parameters = parameters if isinstance(parameters, Mapping) else {}
    found = manifest.get("method") or parameters.get("method")
    if found:
        return str(found)
    tissue, structure = parameters.get("tissue_method"), parameters.get("structure_method")
    if tissue and structure:
        return f"{tissue} (tissues), {structure} (structures)"
    if tissue:
        return f"{tissue} (tissues and structures)" if parameters.get("structures") else f"{tissue} (tissues)"
    if structure:
        return f"{structure} (structures)"
    return Missing("not recorded in the manifest")


#: What the report's processing time is, and how it relates to the manifest's total.
TIME_NOTE = ("Processing time: the sum of the processing steps' times below, as recorded in manifest.json "
             "(steps). manifest.json's \"seconds\" is the command's whole wall-clock time, which also counts "
             "reading the input and writing the outputs (this report among them), so it is a little longer.")


def _steps_seconds(manifest: Mapping[str, Any]) -> Cell:
    """Sum of the steps' ``seconds`` (undefined when no step, or any step, was timed)."""
    steps = [s for s in manifest.get("steps") or [] if isinstance(s, Mapping)]
    times = [s.get("seconds") for s in steps]
    if not steps:
        return Missing("no processing steps recorded in the manifest")
    if not all(isinstance(t, int | float) for t in times):
        return Missing("a processing step was not timed")
    return number(sum(times), 1, missing="not timed")


def _summary_rows(manifest: Mapping[str, Any]) -> list[tuple[Cell, ...]]:
    argv = manifest.get("argv")
    command = str(manifest.get("command") or "")
    if isinstance(argv, list) and argv:
        command = " ".join(str(a) for a in argv) if command in (argv[0], "") else f"{command}: {' '.join(argv)}"
    plat = manifest.get("platform")
    rows: list[tuple[Cell, ...]] = [
        ("mriquant version", _manifest_version(manifest)),
        ("Method", _manifest_method(manifest)),
        ("Command", command or Missing("not recorded in the manifest")),
        ("Started (UTC)", scalar(manifest.get("started"))),
        ("Processing time (s)", _steps_seconds(manifest)),
    ]
    if isinstance(plat, Mapping):
        rows.append(("Platform", " / ".join(str(v) for v in plat.values())))
    return rows


def _steps_table(manifest: Mapping[str, Any]) -> Table | None:
    steps = manifest.get("steps")
    if not steps:
        return None
    rows = tuple(
        (str(s.get("name", "")), str(s.get("version") or ""), scalar(s.get("params") or {}),
         number(s.get("seconds"), 2, missing="not timed"))
        for s in steps if isinstance(s, Mapping)
    )
    return Table("steps", "Processing steps", ("Step", "Version", "Parameters", "Seconds"), rows, frozenset({3}))


def _inputs_table(manifest: Mapping[str, Any]) -> Table | None:
    inputs = manifest.get("inputs")
    if not inputs:
        return None
    rows = tuple(
        (str(i.get("path", "")), str(i.get("sha256") or "") or Missing("not hashed"),
         scalar(i.get("bytes")) if "bytes" in i else "")
        for i in inputs if isinstance(i, Mapping)
    )
    return Table("inputs", "Inputs", ("Path", "SHA-256", "Bytes"), rows, frozenset({2}))


def provenance_section(manifest: Mapping[str, Any]) -> Section:
    """Version, method, command, timings, steps with parameters, input hashes, outputs, library versions."""
    tables: list[Table | None] = [
        Table("run", "Run", ("Item", "Value"), tuple(_summary_rows(manifest)), notes=(TIME_NOTE,)),
        _steps_table(manifest),
        _inputs_table(manifest),
    ]
    parameters = manifest.get("parameters")
    if isinstance(parameters, Mapping) and parameters:
        tables.append(Table("parameters", "Parameters", ("Parameter", "Value"),
                            tuple((str(k), scalar(v)) for k, v in parameters.items())))
    outputs = manifest.get("outputs")
    if outputs:
        tables.append(Table("outputs", "Outputs", ("File",), tuple((str(o),) for o in outputs)))
    versions = manifest.get("versions")
    if isinstance(versions, Mapping) and versions:
        tables.append(Table("versions", "Library versions", ("Library", "Version"),
                            tuple((str(k), str(v) if v else Missing("not installed")) for k, v in versions.items())))
    notes = () if manifest else ("No run manifest was given.",)
    return Section("provenance", "Provenance", tuple(t for t in tables if t is not None), notes)


# --- HTML rendering ---

_CSS = """
body { font: 14px/1.45 "DejaVu Sans", Helvetica, Arial, sans-serif; color: #111; background: #fff;
       margin: 0 auto; max-width: 1120px; padding: 16px 24px; }
h1 { font-size: 22px; margin: 0 0 2px; } h2 { font-size: 18px; border-bottom: 2px solid #333;
     margin: 28px 0 8px; padding-bottom: 2px; } h3 { font-size: 15px; margin: 16px 0 4px; }
.identity { font-size: 15px; color: #333; } .generator { color: #555; font-size: 12px; }
table { border-collapse: collapse; margin: 4px 0 8px; font-size: 13px; }
th, td { border: 1px solid #bbb; padding: 2px 8px; vertical-align: top; text-align: left; }
th { background: #eee; } td.num { text-align: right; font-variant-numeric: tabular-nums; }
td.wrap { word-break: break-all; max-width: 520px; }
tr:nth-child(even) td { background: #fafafa; }
.missing { color: #666; cursor: help; } .missing a { text-decoration: none; } sup { font-size: 10px; }
.swatch { display: inline-block; width: 14px; height: 14px; border: 1px solid #000;
          vertical-align: -2px; margin-right: 6px; }
.badge { display: inline-block; padding: 0 6px; border-radius: 3px; font-weight: bold; color: #fff; }
.badge.error { background: #b00020; } .badge.warning { background: #b86e00; } .badge.info { background: #2a6f97; }
figure { margin: 8px 0 16px; } figure img { width: 100%; height: auto; border: 1px solid #ccc; }
figcaption, .note { font-size: 12px; color: #333; }
ol.footnotes { font-size: 12px; }
@media print {
  body { max-width: none; padding: 0; font-size: 11px; }
  h2 { break-after: avoid; } table, figure { break-inside: avoid; }
  tr:nth-child(even) td { background: #fff; }
  .swatch, .badge { -webkit-print-color-adjust: exact; print-color-adjust: exact; }
}
@page { size: A4; margin: 14mm; }
"""

_TEMPLATE = """<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{{ content.title }} — {{ content.identity }}</title>
<style>{{ css }}</style>
</head>
<body>
<header>
<h1>{{ content.title }}</h1>
<div class="identity">{{ content.identity }}</div>
<div class="generator">Written by {{ content.generator }}. Automatic measurements: review before use.</div>
</header>
{%- macro cell(c, numeric) -%}
{%- if c is missing -%}
{%- set n = footnotes[c.reason] -%}
<td{{ ' class="num"'|safe if numeric }}><span class="missing" title="{{ c.reason }}">{{ dash -}}
<sup><a href="#note-{{ n }}">{{ n }}</a></sup></span></td>
{%- elif c is swatch -%}
<td><span class="swatch" style="background: {{ c.css }}"></span>{{ c.text }}</td>
{%- elif c is badge -%}
<td><span class="badge {{ c.level }}">{{ c.text }}</span></td>
{%- else -%}
<td class="{{ 'num' if numeric else ('wrap' if c|length > 60) }}">{{ c }}</td>
{%- endif -%}
{%- endmacro %}
{% for section in content.sections %}
<section id="{{ section.key }}">
<h2>{{ section.title }}</h2>
{% for note in section.notes %}<p class="note">{{ note }}</p>
{% endfor %}
{%- for key in section.figures %}{% set fig = content.figures[key] %}
<figure id="figure-{{ key }}"><img src="{{ images[key] }}" alt="{{ fig.title }}">
<figcaption>{{ fig.caption }}</figcaption></figure>
{% endfor %}
{%- for table in section.tables %}
<h3>{{ table.title }}</h3>
<table id="table-{{ table.key }}">
<thead><tr>{% for column in table.columns %}<th>{{ column }}</th>{% endfor %}</tr></thead>
<tbody>
{% for row in table.rows %}<tr>{% for c in row %}{{ cell(c, loop.index0 in table.numeric) }}{% endfor %}</tr>
{% endfor %}</tbody>
</table>
{% for note in table.notes %}<p class="note">{{ note }}</p>{% endfor %}
{% endfor %}
</section>
{% endfor %}
{% if footnotes %}
<section id="notes">
<h2>Notes</h2>
<ol class="footnotes">
{% for reason, n in footnotes.items() %}<li id="note-{{ n }}">{{ dash }} {{ reason }}</li>
{% endfor %}</ol>
</section>
{% endif %}
</body>
</html>
"""


def _environment() -> jinja2.Environment:
    env = jinja2.Environment(autoescape=True, undefined=jinja2.StrictUndefined, keep_trailing_newline=True)
    env.tests["missing"] = lambda c: isinstance(c, Missing)
    env.tests["swatch"] = lambda c: isinstance(c, Swatch)
    env.tests["badge"] = lambda c: isinstance(c, Badge)
    return env


def render_html(content: ReportContent, images: Mapping[str, str]) -> str:
    """Render ``content`` as one self-contained HTML page.

    Parameters
    ----------
    content : ReportContent
        What to show.
    images : mapping of str to str
        ``data:image/png;base64,...`` URI of every figure key the sections name.

    Returns
    -------
    str
        The HTML text (UTF-8 when written).

    """
    template = _environment().from_string(_TEMPLATE)
    return template.render(content=content, images=images, footnotes=content.footnotes(), css=_CSS, dash=DASH)
