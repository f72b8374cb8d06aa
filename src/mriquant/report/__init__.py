"""Reports: one self-contained HTML page and a PDF with the same figures and tables.

:func:`build_report` writes ``report.html`` (inline CSS, figures as base64 PNG, no scripts or
external resources) and ``report.pdf`` (matplotlib ``PdfPages``: figure pages, then table pages)
into a folder, each atomically. The report opens with the key findings (headline volumes with their
normalised values, adult ranges and QC flags, then the QC errors and warnings: the PDF's first page,
under the title and a few patient and scan fields), then shows the patient/study header (only the fields given),
the scan in three planes with tissue and structure overlays and the brain-mask contour, the volume
tables (eTIV, tissue totals, structures with % of eTIV and asymmetry), QC flags, provenance from the
run manifest and, for two time points, the change table and bar plot.

Submodules are imported inside the functions, so ``import mriquant.report`` (or any of its
submodules) does not load matplotlib or jinja2.

Examples
--------
>>> from mriquant.testing import make_phantom
>>> ph = make_phantom(spacing=(6.0, 6.0, 6.0), seed=1)
>>> build_report(tmp, image=ph.image, volumes={}, manifest={})  # doctest: +SKIP
['report.html', 'report.pdf']

"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from mriquant.core import outputs as out
from mriquant.core.errors import InputError, OutputError
from mriquant.core.image import Image, LabelImage

if TYPE_CHECKING:
    from mriquant.core.case import Case
    from mriquant.report.figures import ReportFigure
    from mriquant.report.html import ReportContent

__all__ = ["REPORT_FILES", "build_change_report", "build_report", "report_case"]

#: Names of the files :func:`build_report` writes.
REPORT_FILES = (out.REPORT_HTML, out.REPORT_PDF)

Convention = Literal["radiological", "neurological"]


def build_report(
    folder: Path,
    *,
    image: Image,
    volumes: Mapping[str, Any],
    manifest: Mapping[str, Any],
    brain_mask: LabelImage | None = None,
    tissue: LabelImage | None = None,
    dseg: LabelImage | None = None,
    qc: Mapping[str, Any] | None = None,
    header: Mapping[str, str] | None = None,
    change: Mapping[str, Any] | None = None,
    followup_image: Image | None = None,
    convention: Convention = "radiological",
) -> list[str]:
    """Write ``report.html`` and ``report.pdf`` into ``folder``.

    Parameters
    ----------
    folder : pathlib.Path
        Output folder (created if missing). Each file is written to a temporary name and renamed.
    image : Image
        The scan (the baseline scan of a longitudinal report).
    volumes : mapping
        Content of ``volumes.json``: ``etiv_ml``, ``etiv_method``, ``tissues``, ``totals``,
        ``structures``, ``asymmetry``; missing sections are left out with a note.
    manifest : mapping
        Content of ``manifest.json`` (versions, command, parameters, steps, inputs with SHA-256).
    brain_mask, tissue, dseg : LabelImage, optional
        Brain mask (drawn as a contour), tissue map (1 CSF, 2 GM, 3 WM) and FreeSurfer-id
        structure map, on any grid.
    qc : mapping, optional
        ``{"metrics": {...}, "flags": [{"code", "severity", "message", "label"?}]}``.
    header : mapping of str to str, optional
        DICOM fields (``PatientName``, ``StudyDate``, ...); only those given are shown. Default:
        ``image.meta["dicom"]`` for DICOM input, else the input file name only.
    change : mapping, optional
        ``{"interval_years", "pbvc_percent", "structures": [...]}``: adds the change section.
    followup_image : Image, optional
        Follow-up scan, shown in three planes at the same world position as the baseline.
    convention : {"radiological", "neurological"}
        Left-right display convention of the figures (stated on them).

    Returns
    -------
    list of str
        The names written: :data:`REPORT_FILES` (``report.html`` and ``report.pdf``).

    Raises
    ------
    InputError
        If ``volumes`` or ``manifest`` is not a mapping or ``convention`` is unknown.
    OutputError
        If ``folder`` exists and is not a folder.

    """
    from mriquant.io.write import atomic_path
    from mriquant.report.figures import png_data_uri
    from mriquant.report.html import render_html
    from mriquant.report.pdf import write_pdf

    folder = Path(folder)
    _check_arguments(folder, volumes, manifest, convention)
    figures = _figures(image, brain_mask=brain_mask, tissue=tissue, dseg=dseg, change=change,
                       followup_image=followup_image, convention=convention)
    content = _content(image, volumes=volumes, manifest=manifest, qc=qc, header=header, change=change,
                       followup_image=followup_image, figures=figures)
    thumbnail = _thumbnail(image, brain_mask=brain_mask, tissue=tissue, dseg=dseg, convention=convention)
    html_text = render_html(content, {f.key: png_data_uri(f.figure) for f in figures})
    html_path, pdf_path = (folder / name for name in REPORT_FILES)
    with atomic_path(html_path) as tmp:
        tmp.write_text(html_text, encoding="utf-8")
    with atomic_path(pdf_path) as tmp:
        write_pdf(tmp, content, figures, thumbnail=thumbnail)
    return list(REPORT_FILES)


def report_case(folder: Path, case: Case, *, manifest: Mapping[str, Any]) -> list[str]:
    """Write the report of a measured case: :func:`build_report` with what the case holds.

    ``case.measurements["volumes"]`` (from the quantify step) gives the volumes and QC; the label maps and the
    input image come from the case.
    """
    if "volumes" not in case.measurements:
        raise InputError("Expected a measured case (the quantify step), found no volumes; run QuantifyStep first.")
    volumes = case.measurements["volumes"]
    return build_report(
        folder, image=case.image, volumes=volumes, manifest=manifest, brain_mask=case.labels.get("brain_mask"),
        tissue=case.labels.get("tissue"), dseg=case.labels.get("dseg"), qc=volumes.get("qc"),
    )  # fmt: skip


def build_change_report(
    folder: Path,
    *,
    baseline: Image,
    followup: Image,
    change: Mapping[str, Any],
    volumes: Mapping[str, Any],
    manifest: Mapping[str, Any],
    brain_mask: LabelImage | None = None,
    tissue: LabelImage | None = None,
    dseg: LabelImage | None = None,
    qc: Mapping[str, Any] | None = None,
    header: Mapping[str, str] | None = None,
    convention: Convention = "radiological",
) -> list[str]:
    """Write the longitudinal report: :func:`build_report` with both scans and the change section.

    ``volumes``, ``brain_mask``, ``tissue`` and ``dseg`` describe the baseline; ``change`` is
    ``{"interval_years", "pbvc_percent", "structures": [{"label", "name", "baseline_ml",
    "followup_ml", "change_ml", "change_percent", "annualised_percent"}]}``.
    """
    return build_report(folder, image=baseline, volumes=volumes, manifest=manifest, brain_mask=brain_mask,
                        tissue=tissue, dseg=dseg, qc=qc, header=header, change=change, followup_image=followup,
                        convention=convention)


def _check_arguments(folder: Path, volumes: Any, manifest: Any, convention: str) -> None:
    if folder.exists() and not folder.is_dir():
        raise OutputError(f"Expected a folder for the report, found a file at {folder}; choose another path.")
    for name, value in (("volumes", volumes), ("manifest", manifest)):
        if not isinstance(value, Mapping):
            raise InputError(f"Expected {name} as a mapping (the content of {name}.json), "
                             f"found {type(value).__name__}; pass the parsed JSON.")
    if convention not in ("radiological", "neurological"):
        raise InputError(f"Expected convention 'radiological' or 'neurological', found {convention!r}.")


def _figures(
    image: Image,
    *,
    brain_mask: LabelImage | None,
    tissue: LabelImage | None,
    dseg: LabelImage | None,
    change: Mapping[str, Any] | None,
    followup_image: Image | None,
    convention: Convention,
) -> list[ReportFigure]:
    from mriquant.core.labels import TISSUES, freesurfer
    from mriquant.report.figures import Overlay, brain_centre_mm, change_figure, planes_figure

    overlays = [Overlay("Tissue", tissue, TISSUES)] if tissue is not None else []
    if dseg is not None:
        overlays.append(Overlay("Structures", dseg, freesurfer()))
    centre = brain_centre_mm(image, [brain_mask, tissue, dseg])
    baseline = "Baseline scan" if followup_image is not None else "Scan"
    figures = [planes_figure(image, overlays=overlays, brain_mask=brain_mask, centre_mm=centre,
                             convention=convention, key="planes", title=baseline)]
    if followup_image is not None:
        figures.append(planes_figure(followup_image, centre_mm=centre, convention=convention, key="followup",
                                     title="Follow-up scan"))
    bars = change_figure(change) if change is not None else None
    if bars is not None:
        figures.append(bars)
    return figures


def _thumbnail(
    image: Image, *, brain_mask: LabelImage | None, tissue: LabelImage | None, dseg: LabelImage | None,
    convention: Convention,
) -> ReportFigure:
    """One row of the three planes (structures, else tissue overlay) for the PDF's first page."""
    from mriquant.core.labels import TISSUES, freesurfer
    from mriquant.report.figures import Overlay, brain_centre_mm, planes_figure

    overlay = Overlay("Structures", dseg, freesurfer()) if dseg is not None else (
        Overlay("Tissue", tissue, TISSUES) if tissue is not None else None)
    return planes_figure(image, overlays=[overlay] if overlay else [], brain_mask=brain_mask,
                         centre_mm=brain_centre_mm(image, [brain_mask, tissue, dseg]), convention=convention,
                         key="thumbnail", title="Overview", legend=False)  # fmt: skip


def _content(
    image: Image,
    *,
    volumes: Mapping[str, Any],
    manifest: Mapping[str, Any],
    qc: Mapping[str, Any] | None,
    header: Mapping[str, str] | None,
    change: Mapping[str, Any] | None,
    followup_image: Image | None,
    figures: list[ReportFigure],
) -> ReportContent:
    from mriquant import __version__
    from mriquant.report import html
    from mriquant.report.findings import findings_section

    tables = [html.header_table(image, header), html.geometry_table(image, "Baseline scan" if change else "Scan")]
    if followup_image is not None:
        tables.append(html.geometry_table(followup_image, "Follow-up scan"))
    image_keys = tuple(f.key for f in figures if f.key in ("planes", "followup"))
    sections = [
        findings_section(volumes, qc),
        html.Section("patient", "Patient and scan", tuple(tables)),
        html.Section("images", "Images", figures=image_keys),
        html.volumes_section(volumes),
    ]
    if change is not None:
        sections.append(html.change_section(change, tuple(f.key for f in figures if f.key == "change")))
    sections += [html.qc_section(qc), html.provenance_section(manifest)]
    title = "Brain MRI volumetry report" + (" — change between scans" if change is not None else "")
    return html.ReportContent(title, html.identity(image, header), tuple(sections), f"mriquant {__version__}",
                              {f.key: f for f in figures}, html.brief_table(image, header))
