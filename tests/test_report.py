"""The report package: HTML and PDF content, escaping, self-containment, figures and a browser screenshot."""

from __future__ import annotations

import copy
import html.parser
import re
import subprocess
from pathlib import Path
from typing import Any

import matplotlib
import numpy as np
import pytest

from mriquant.core.errors import InputError, OutputError
from mriquant.core.geometry import reorient
from mriquant.core.image import Image, LabelImage
from mriquant.core.labels import TISSUES, freesurfer
from mriquant.quantify import volumes as qv
from mriquant.report import REPORT_FILES, build_change_report, build_report
from mriquant.report import figures as rfig
from mriquant.report import html as rhtml
from mriquant.testing import Phantom, make_phantom

CHROMIUM = Path("/usr/bin/chromium")
HEADER = {"PatientName": "Doe^Jane", "PatientID": "X123", "StudyDate": "20240102"}


# --- fixtures and helpers ---


def volumes_of(ph: Phantom) -> dict[str, Any]:
    etiv = qv.intracranial_volume_ml(ph.brain_mask)
    structures = qv.label_volumes(ph.structures, table=freesurfer(), etiv_ml=etiv)
    return {
        "units": "mL",
        "etiv_ml": etiv,
        "etiv_method": "brain-mask",
        "tissues": qv.tissue_totals(ph.tissue, etiv_ml=etiv),
        "totals": qv.structure_totals(ph.structures),
        "structures": [s.as_dict() for s in structures],
        "asymmetry": qv.asymmetries(structures),
    }


MANIFEST: dict[str, Any] = {
    "tool": "mriquant",
    "command": "run",
    "argv": ["run", "scan.nii.gz", "out"],
    "started": "2024-05-01T10:00:00Z",
    "seconds": 12.5,
    "versions": {"mriquant": "9.8.7", "numpy": "1.26.4", "torch": None},
    "parameters": {"method": "gmm-mrf", "skullstrip": "unet"},
    "inputs": [{"path": "/data/scan.nii.gz", "sha256": "0123456789abcdef" * 4, "bytes": 12345, "files": 1}],
    "outputs": ["volumes.json", "tissue.nii.gz"],
    "steps": [{"name": "n4-bias", "params": {"shrink": 4}, "version": "0.1", "started": "x", "seconds": 3.25}],
}

QC: dict[str, Any] = {
    "metrics": {"snr": 23.1, "cnr": 2.5},
    "flags": [
        {"code": "LOW_CNR", "severity": "warning", "message": "grey/white contrast is low", "label": 17},
        {"code": "MASK_EDGE", "severity": "error", "message": "brain mask touches the field of view"},
    ],
}


@pytest.fixture(scope="module")
def phantom() -> Phantom:
    return make_phantom(spacing=(4.0, 4.0, 5.0), orientation="LIA", seed=3)


@pytest.fixture(scope="module")
def full_report(phantom: Phantom, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, Any], str]:
    folder = tmp_path_factory.mktemp("report")
    volumes = volumes_of(phantom)
    names = build_report(folder, image=phantom.image, volumes=volumes, manifest=MANIFEST, qc=QC, header=HEADER,
                         brain_mask=phantom.brain_mask, tissue=phantom.tissue, dseg=phantom.structures)
    assert names == ["report.html", "report.pdf"]
    return folder, volumes, (folder / "report.html").read_text("utf-8")


class _Tables(html.parser.HTMLParser):
    """Collect the cell texts (and title attributes) of every ``<table id=...>``."""

    def __init__(self) -> None:
        super().__init__()
        self.tables: dict[str, list[list[str]]] = {}
        self.titles: dict[str, list[list[str | None]]] = {}
        self._table: str | None = None
        self._cell: list[str] | None = None
        self._title: str | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = dict(attrs)
        if tag == "table":
            self._table = a.get("id") or ""
            self.tables[self._table], self.titles[self._table] = [], []
        elif tag == "tr" and self._table is not None:
            self.tables[self._table].append([])
            self.titles[self._table].append([])
        elif tag in ("td", "th") and self._table is not None:
            self._cell, self._title = [], None
        elif self._cell is not None and a.get("title"):
            self._title = a["title"]

    def handle_endtag(self, tag: str) -> None:
        if tag in ("td", "th") and self._table is not None and self._cell is not None:
            self.tables[self._table][-1].append(" ".join("".join(self._cell).split()))
            self.titles[self._table][-1].append(self._title)
            self._cell = None
        elif tag == "table":
            self._table = None

    def handle_data(self, data: str) -> None:
        if self._cell is not None:
            self._cell.append(data)


def parse_tables(text: str) -> _Tables:
    parser = _Tables()
    parser.feed(text)
    return parser


def body_rows(parser: _Tables, key: str) -> list[list[str]]:
    return parser.tables[f"table-{key}"][1:]  # row 0 is the header


def pdf_pages(data: bytes) -> int:
    return len(re.findall(rb"/Type\s*/Page\b", data))


def pdf_text(data: bytes) -> str:
    """Text of an uncompressed matplotlib PDF (its TJ arrays), one string per drawn line."""
    lines = []
    for array in re.findall(rb"\[([^][]*)\]\s*TJ", data):
        chars = re.findall(rb"\(((?:\\.|[^\\)])*)\)", array)
        lines.append(re.sub(rb"\\([\\()])", rb"\1", b"".join(chars)).decode("latin-1"))
    return "\n".join(lines)


# --- HTML content ---


def test_files_written_atomically(full_report: tuple[Path, dict[str, Any], str]) -> None:
    folder, _, _ = full_report
    assert sorted(p.name for p in folder.iterdir()) == sorted(REPORT_FILES)  # no temporary files left


def test_every_structure_volume_in_table(full_report: tuple[Path, dict[str, Any], str]) -> None:
    _, volumes, text = full_report
    rows = {row[0]: row for row in body_rows(parse_tables(text), "structures")}
    assert len(rows) == len(volumes["structures"]) > 5
    for s in volumes["structures"]:
        row = rows[str(s["label"])]
        assert row[1] == s["name"]
        assert row[2] == f"{s['volume_ml']:.2f}"
        assert row[3] == f"{100 * s['fraction_of_etiv']:.3f}"
    # asymmetry index on both sides of a pair, equal to volumes.json
    thalamus = next(a for a in volumes["asymmetry"] if a["left_label"] == 10)
    assert rows["10"][4] == rows["49"][4] == f"{thalamus['asymmetry_index']:.3f}"
    assert rows["24"][4] == ""  # CSF is not bilateral


def test_tissue_totals_and_etiv(full_report: tuple[Path, dict[str, Any], str]) -> None:
    _, volumes, text = full_report
    rows = {row[0]: row[1:] for row in body_rows(parse_tables(text), "tissues")}
    assert rows["Intracranial volume (eTIV)"] == [f"{volumes['etiv_ml']:.2f}", "mL"]
    assert rows["eTIV method"][0] == "brain-mask"
    assert rows["Grey matter"][0] == f"{volumes['tissues']['gm_ml']:.2f}"
    assert rows["Brain parenchymal fraction (GM + WM) / eTIV"][0] == \
        f"{volumes['tissues']['brain_parenchymal_fraction']:.3f}"
    assert rows["Ventricles (structure map)"][0] == f"{volumes['totals']['ventricles_ml']:.2f}"


def test_none_shows_dash_with_reason_not_zero(phantom: Phantom, tmp_path: Path) -> None:
    volumes = volumes_of(phantom)
    volumes["etiv_ml"] = None
    volumes["tissues"] = qv.tissue_totals(phantom.tissue, etiv_ml=None)
    for s in volumes["structures"]:
        s["fraction_of_etiv"] = None
    volumes["structures"][0]["volume_pv_ml"] = 1.5  # one posterior: the PV column appears, others undefined
    build_report(tmp_path, image=phantom.image, volumes=volumes, manifest=MANIFEST)
    parser = parse_tables((tmp_path / "report.html").read_text("utf-8"))
    rows = body_rows(parser, "structures")
    titles = parser.titles["table-structures"][1:]
    assert rows[0][3] == "1.50"
    for row, title in zip(rows, titles, strict=True):
        assert row[4].startswith("—") and "0" not in row[4]  # % of eTIV
        assert title[4] == "intracranial volume (eTIV) not available"
    assert rows[1][3].startswith("—") and titles[1][3] == "no posterior probabilities for this label"
    tissues = {row[0]: row for row in body_rows(parser, "tissues")}
    assert tissues["Intracranial volume (eTIV)"][1].startswith("—")
    assert tissues["Brain parenchymal fraction (GM + WM) / eTIV"][1].startswith("—")
    notes = (tmp_path / "report.html").read_text("utf-8").split('id="notes"')[1]
    assert "intracranial volume (eTIV) not available" in notes
    assert "brain parenchymal fraction undefined" in notes  # the reason from volumes.json


def test_script_names_escaped(phantom: Phantom, tmp_path: Path) -> None:
    evil = "<script>alert(1)</script>"
    volumes = volumes_of(phantom)
    volumes["structures"][0]["name"] = evil
    qc = {"flags": [{"code": "X", "severity": "error", "message": f"bad {evil}"}]}
    manifest = {**MANIFEST, "steps": [{"name": evil, "params": {"p": evil}, "seconds": 1.0}]}
    build_report(tmp_path, image=phantom.image, volumes=volumes, manifest=manifest, qc=qc,
                 header={"PatientName": evil, "StudyDescription": '"><img src=x onerror=alert(1)>'})
    text = (tmp_path / "report.html").read_text("utf-8")
    assert "<script" not in text.lower()
    assert "<img src=x" not in text
    assert text.count("&lt;script&gt;alert(1)&lt;/script&gt;") >= 4
    assert body_rows(parse_tables(text), "structures")[0][1] == evil  # shown as text


def test_self_contained_no_external_urls(full_report: tuple[Path, dict[str, Any], str]) -> None:
    _, _, text = full_report
    assert "http://" not in text and "https://" not in text
    sources = re.findall(r"""\b(?:src|href)\s*=\s*["']?([^"'\s>]*)""", text, flags=re.IGNORECASE)
    assert sources, "expected embedded images and note links"
    for value in sources:
        assert value.startswith(("data:image/png;base64,", "#")), value
    assert not re.search(r"<(script|link|iframe|object|embed)\b", text, flags=re.IGNORECASE)
    assert "@import" not in text and "url(" not in text
    assert len(re.findall(r'src="data:image/png;base64,', text)) == 1  # the planes figure


def test_dicom_header_shows_only_given_keys(full_report: tuple[Path, dict[str, Any], str]) -> None:
    _, _, text = full_report
    rows = body_rows(parse_tables(text), "header")
    assert rows == [["Patient name", "Doe, Jane"], ["Patient ID", "X123"], ["Study date", "2024-01-02"]]
    for absent in ("Birth date", "PatientBirthDate", "Sex", "Institution", "Manufacturer", "Series"):
        assert absent not in text


def test_non_dicom_header_is_the_file_name(phantom: Phantom, tmp_path: Path) -> None:
    image = Image(phantom.image.array, phantom.image.affine, {"source": "/some/where/sub-01_T1w.nii.gz"})
    build_report(tmp_path, image=image, volumes={}, manifest={})
    text = (tmp_path / "report.html").read_text("utf-8")
    assert body_rows(parse_tables(text), "header") == [["File", "sub-01_T1w.nii.gz"]]
    assert "Patient name" not in text and "/some/where" not in text


def test_missing_sections_are_noted_not_invented(phantom: Phantom, tmp_path: Path) -> None:
    build_report(tmp_path, image=phantom.image, volumes={"etiv_ml": 1400.0, "etiv_method": "brain-mask"},
                 manifest={})
    text = (tmp_path / "report.html").read_text("utf-8")
    tables = parse_tables(text).tables
    assert "table-structures" not in tables and "table-asymmetry" not in tables
    assert "No structure segmentation (dseg) was given" in text
    assert "No tissue segmentation was given" in text
    assert "No quality-control results were given" in text
    run = dict((r[0], r[1]) for r in body_rows(parse_tables(text), "run"))
    assert run["mriquant version"].startswith("—")


def test_qc_flags_most_severe_first(full_report: tuple[Path, dict[str, Any], str]) -> None:
    _, _, text = full_report
    parser = parse_tables(text)
    flags = body_rows(parser, "qc-flags")
    assert [f[0] for f in flags] == ["error", "warning"]
    assert flags[1] == ["warning", "LOW_CNR", "17 Left-Hippocampus", "grey/white contrast is low"]
    assert 'class="badge error"' in text
    assert body_rows(parser, "qc-metrics") == [["Signal-to-noise ratio (white-matter mean / noise SD)", "23.1", ""],
                                               ["Cnr", "2.500", ""]]


def test_provenance(full_report: tuple[Path, dict[str, Any], str]) -> None:
    _, _, text = full_report
    parser = parse_tables(text)
    run = dict((r[0], r[1]) for r in body_rows(parser, "run"))
    assert run["mriquant version"] == "9.8.7"
    assert run["Method"] == "gmm-mrf"
    assert run["Command"] == "run scan.nii.gz out"
    assert body_rows(parser, "steps") == [["n4-bias", "0.1", '{"shrink": 4}', "3.25"]]
    assert body_rows(parser, "inputs") == [["/data/scan.nii.gz", "0123456789abcdef" * 4, "12345"]]
    versions = dict((r[0], r[1]) for r in body_rows(parser, "versions"))
    assert versions["numpy"] == "1.26.4" and versions["torch"].startswith("—")


def test_number_formatting_of_numpy_scalars_and_nan() -> None:
    assert rhtml.ml(np.float32(1.23456)) == "1.23"
    assert rhtml.ml(np.int64(2)) == "2.00"
    assert rhtml.ml(float("nan"), missing="r") == rhtml.Missing("r (not a finite number)")
    assert rhtml.scalar(np.float64(0.000123456)) == "0.0001235"
    assert rhtml.scalar({"b": [1, 2]}) == '{"b": [1, 2]}'


# --- PDF ---


def test_pdf_pages_and_text(phantom: Phantom, tmp_path: Path) -> None:
    volumes = volumes_of(phantom)
    with matplotlib.rc_context({"pdf.compression": 0}):
        build_report(tmp_path, image=phantom.image, volumes=volumes, manifest=MANIFEST, qc=QC, header=HEADER,
                     brain_mask=phantom.brain_mask, tissue=phantom.tissue, dseg=phantom.structures)
    data = (tmp_path / "report.pdf").read_bytes()
    assert data.startswith(b"%PDF-") and data.rstrip().endswith(b"%%EOF")
    assert pdf_pages(data) == 4  # key findings, the planes figure, then two pages of tables
    text = pdf_text(data)
    for s in volumes["structures"]:
        assert re.search(rf"\b{s['label']}\s+{re.escape(s['name'])}\s+{s['volume_ml']:.2f}\b", text), s["name"]
    assert "LOW_CNR" in text and "0123456789abcdef" in text and "Page 4 of 4" in text


def test_pdf_minimal_report_has_three_pages(phantom: Phantom, tmp_path: Path) -> None:
    build_report(tmp_path, image=phantom.image, volumes={}, manifest={})
    data = (tmp_path / "report.pdf").read_bytes()
    assert data.startswith(b"%PDF-")
    assert pdf_pages(data) == 3  # key findings, one figure page, one table page


# --- Longitudinal ---


def _change(volumes: dict[str, Any]) -> dict[str, Any]:
    rows = []
    for n, s in enumerate(volumes["structures"]):
        base = s["volume_ml"]
        follow = base * (1 - 0.01 * (n % 4))
        rows.append({"label": s["label"], "name": s["name"], "baseline_ml": base, "followup_ml": follow,
                     "change_ml": follow - base, "change_percent": 100 * (follow - base) / base,
                     "annualised_percent": None})
    return {"interval_years": None, "pbvc_percent": -0.75, "structures": rows}


def test_change_report(phantom: Phantom, tmp_path: Path) -> None:
    volumes = volumes_of(phantom)
    change = _change(volumes)
    followup = make_phantom(spacing=(5.0, 5.0, 5.0), orientation="RAS", seed=4).image
    names = build_change_report(tmp_path, baseline=phantom.image, followup=followup, change=change,
                                volumes=volumes, manifest=MANIFEST, tissue=phantom.tissue, dseg=phantom.structures)
    assert names == list(REPORT_FILES)
    text = (tmp_path / "report.html").read_text("utf-8")
    parser = parse_tables(text)
    rows = body_rows(parser, "change")
    assert len(rows) == len(change["structures"])
    for row, c in zip(rows, change["structures"], strict=True):
        assert row[:7] == [str(c["label"]), c["name"], f"{c['baseline_ml']:.2f}", f"{c['followup_ml']:.2f}",
                           f"{c['change_ml']:.2f}", f"{c['change_percent']:.2f}", row[6]]
        assert row[6].startswith("—")  # no interval: annualised change undefined
    summary = dict((r[0], r[1]) for r in body_rows(parser, "change-summary"))
    assert summary["Percentage brain volume change (PBVC)"] == "-0.75"
    assert summary["Interval between scans"].startswith("—")
    for key in ("planes", "followup", "change"):
        assert f'id="figure-{key}"' in text
    assert pdf_pages((tmp_path / "report.pdf").read_bytes()) >= 3 + 2  # three figures + tables


# --- Figures ---


def _right_hemisphere(ph: Phantom) -> LabelImage:
    """Tissue labels kept only where world x > 0 (the patient's right)."""
    i, j, k = np.indices(ph.tissue.shape)
    x = ph.tissue.affine[0, 0] * i + ph.tissue.affine[0, 1] * j + ph.tissue.affine[0, 2] * k + ph.tissue.affine[0, 3]
    return LabelImage(np.where(x > 5, ph.tissue.array, 0), ph.tissue.affine)


@pytest.mark.parametrize(("convention", "right_on_left"), [("radiological", True), ("neurological", False)])
def test_left_right_convention(phantom: Phantom, convention: rfig.Convention, right_on_left: bool) -> None:
    ras = reorient(phantom.image, "RAS")
    right = _right_hemisphere(phantom)
    cut = rfig._cut_index(ras, rfig.brain_centre_mm(phantom.image, [phantom.brain_mask]))
    for plane in ("axial", "coronal"):
        panel = rfig._panel(ras, plane, cut, convention)
        labels = rfig._label_slice(right, ras, panel)
        half = labels.shape[1] // 2
        left_half, right_half = bool(labels[:, :half].any()), bool(labels[:, half:].any())
        assert (left_half, right_half) == (right_on_left, not right_on_left), plane
        assert panel.letters[:2] == (("R", "L") if right_on_left else ("L", "R"))
    sagittal = rfig._panel(ras, "sagittal", cut, convention)
    assert sagittal.letters == ("A", "P", "I", "S")
    # anterior on the left: the world y of the first column exceeds that of the last
    y = ras.affine[1, :3] @ sagittal.ijk[:, 0, :]
    assert y[0] > y[-1]


def test_label_slices_follow_world_position_across_grids(phantom: Phantom) -> None:
    """Labels on another grid (other orientation and spacing) land on the same anatomy."""
    ras = reorient(phantom.image, "RAS")
    other = make_phantom(spacing=(2.0, 2.0, 2.0), orientation="PSR", seed=3).tissue
    cut = rfig._cut_index(ras, rfig.brain_centre_mm(phantom.image, [phantom.brain_mask]))
    for plane in rfig.PLANES:
        panel = rfig._panel(ras, plane, cut, "radiological")
        same = rfig._label_slice(phantom.tissue, ras, panel)
        resampled = rfig._label_slice(other, ras, panel)
        union = (same > 0) | (resampled > 0)
        assert union.sum() > 300
        assert np.mean(same[union] == resampled[union]) > 0.7, plane  # 4 mm vs 2 mm voxels: edges differ


def test_anisotropic_aspect(phantom: Phantom) -> None:
    ras = reorient(phantom.image, "RAS")
    sx, sy, sz = ras.spacing
    assert (sx, sy, sz) == pytest.approx((4.0, 4.0, 5.0))
    cut = (0, 0, 0)
    aspects = {p: rfig._panel(ras, p, cut, "radiological").aspect for p in rfig.PLANES}
    assert aspects == pytest.approx({"axial": sy / sx, "coronal": sz / sx, "sagittal": sz / sy})


def test_dollar_signs_do_not_break_figures() -> None:
    change = {"interval_years": 1.0, "pbvc_percent": 1.0,
              "structures": [{"label": 17, "name": "cost $5 and $x^2$ {", "change_percent": 2.0}]}
    fig = rfig.change_figure(change)
    assert fig is not None
    assert rfig.png_data_uri(fig.figure).startswith("data:image/png;base64,")
    assert rfig.change_figure({"structures": [{"label": 17, "change_percent": None}]}) is None


def test_planes_figure_on_an_anisotropic_256_cube() -> None:
    shape = (256, 256, 256)
    grid = np.indices(shape, dtype=np.float32, sparse=True)
    r = np.sqrt(sum((g - 128.0) ** 2 for g in grid))
    image = Image((r < 100).astype(np.float32) * 100 + (r < 60) * 50, np.diag([0.9, 0.9, 1.2, 1.0]))
    tissue = LabelImage(np.select([r < 40, r < 60, r < 100], [3, 2, 1], 0).astype(np.uint8), image.affine)
    dseg = LabelImage(np.where(r < 30, 17, np.where(r < 60, 2, 0)).astype(np.int16), image.affine)
    mask = LabelImage((r < 100).astype(np.uint8), image.affine)
    fig = rfig.planes_figure(image, overlays=[rfig.Overlay("Tissue", tissue, TISSUES),
                                              rfig.Overlay("Structures", dseg, freesurfer())], brain_mask=mask)
    uri = rfig.png_data_uri(fig.figure)  # its speed is measured by the run's report step, not by a timed test
    assert uri.startswith("data:image/png;base64,") and len(uri) > 10_000


# --- Errors ---


def test_folder_that_is_a_file_is_refused(phantom: Phantom, tmp_path: Path) -> None:
    target = tmp_path / "report"
    target.write_text("x")
    with pytest.raises(OutputError, match="Expected a folder"):
        build_report(target, image=phantom.image, volumes={}, manifest={})


def test_volumes_must_be_a_mapping(phantom: Phantom, tmp_path: Path) -> None:
    with pytest.raises(InputError, match="volumes"):
        build_report(tmp_path, image=phantom.image, volumes=[], manifest={})  # type: ignore[arg-type]
    assert not any(tmp_path.iterdir())


# --- Browser screenshot ---


def _rgb_present(pixels: np.ndarray, rgb: tuple[int, int, int], tol: int = 6) -> bool:
    return bool(np.any(np.all(np.abs(pixels - np.asarray(rgb)) <= tol, axis=-1)))


def _blended_over_gray(pixels: np.ndarray, rgb: tuple[int, int, int]) -> int:
    """Pixels that look like ``rgb`` at the overlay opacity over a grey scan (count)."""
    alpha = rfig.OVERLAY_ALPHA
    base = pixels - alpha * np.asarray(rgb)  # = (1 - alpha) * grey when the pixel is such a blend
    grey = base.mean(axis=-1, keepdims=True)
    return int(np.count_nonzero(np.all(np.abs(base - grey) <= 4, axis=-1) & (grey[..., 0] >= 0)
                                & (np.ptp(pixels, axis=-1) > 20)))


@pytest.mark.skipif(not CHROMIUM.exists(), reason="/usr/bin/chromium not installed (apt-get install chromium)")
def test_screenshot_in_chromium(full_report: tuple[Path, dict[str, Any], str], tmp_path: Path) -> None:
    folder, _, _ = full_report
    shot = tmp_path / "shot.png"
    command = [str(CHROMIUM), "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
               "--force-color-profile=srgb", f"--screenshot={shot}", "--window-size=1200,2000",
               (folder / "report.html").resolve().as_uri()]
    subprocess.run(command, check=True, capture_output=True, timeout=120)
    import matplotlib.image

    pixels = np.round(matplotlib.image.imread(shot)[..., :3] * 255).astype(np.int16)
    assert pixels.shape[:2] == (2000, 1200)
    distinct = np.unique(pixels.reshape(-1, 3)[::7], axis=0)
    assert len(distinct) > 200, "the page looks blank"
    for label in (TISSUES.by_id(1), TISSUES.by_id(2), freesurfer().by_id(10), freesurfer().by_id(12)):
        assert _rgb_present(pixels, label.rgb), f"colour of {label.name} {label.rgb} not on screen (swatch/legend)"
    for label in (TISSUES.by_id(1), TISSUES.by_id(2)):
        assert _blended_over_gray(pixels, label.rgb) > 500, f"no {label.name} overlay on the scan"


def test_inputs_are_not_modified(phantom: Phantom, tmp_path: Path) -> None:
    volumes = volumes_of(phantom)
    before = copy.deepcopy((volumes, MANIFEST, QC))
    build_report(tmp_path, image=phantom.image, volumes=volumes, manifest=MANIFEST, qc=QC)
    assert (volumes, MANIFEST, QC) == before


# --- What a reader checks first: findings, names, provenance, fonts ---

RUN_QC: dict[str, Any] = {
    "metrics": {"noise_sd": 1.6, "snr_method": "wm_residual", "snr": 78.73, "brain_mask_ml": 1621.93,
                "brain_volume_ml": 1621.93, "tissue_volumes_ml": {"CSF": 248.5, "GM": 791.9, "WM": 581.5},
                "registration": {"ncc": 0.6487, "voxels": 234951.0}, "cnr_gm_wm": None,
                "reasons": {"cnr_gm_wm": "no grey matter"}},
    "flags": [
        {"code": "volume_out_of_range", "severity": "warning", "label": 17, "table": "freesurfer",
         "message": "Left-Hippocampus is 1.5 mL, below the adult range 2-6 mL (potvin2016)."},
        {"code": "volume_out_of_range", "severity": "error", "label": 2, "table": "tissues",
         "message": "GM is 100.0 mL, below the adult range 400-950 mL (ge2002)."},
        {"code": "low_snr", "severity": "warning", "message": "SNR is 9.99, below 10."},
    ],
}


def with_hippocampi(volumes: dict[str, Any]) -> dict[str, Any]:
    """``volumes`` plus hippocampus rows (the phantom has none) and their asymmetry pair."""
    rows = [{"label": label, "name": name, "volume_ml": ml, "fraction_of_etiv": ml / volumes["etiv_ml"]}
            for label, name, ml in ((17, "Left-Hippocampus", 1.5), (53, "Right-Hippocampus", 4.05))]
    pair = {"structure": "Hippocampus", "left_label": 17, "right_label": 53, "left_ml": 1.5, "right_ml": 4.05,
            "asymmetry_index": qv.asymmetry_index(1.5, 4.05)}
    return {**volumes, "structures": [*volumes["structures"], *rows], "asymmetry": [*volumes["asymmetry"], pair]}


def _findings(text: str) -> dict[str, list[str]]:
    return {row[0]: row[1:] for row in body_rows(parse_tables(text), "findings")}


def test_key_findings_come_first_with_normalised_values_and_flags(phantom: Phantom, tmp_path: Path) -> None:
    volumes = with_hippocampi(volumes_of(phantom))
    volumes["etiv_affine_ml"] = 0.9 * volumes["etiv_ml"]  # a different eTIV that must not normalise anything
    build_report(tmp_path, image=phantom.image, volumes=volumes, manifest=MANIFEST, qc=RUN_QC)
    text = (tmp_path / "report.html").read_text("utf-8")
    assert text.index('<section id="findings">') < text.index('<section id="patient">')
    rows = _findings(text)
    left = next(s for s in volumes["structures"] if s["label"] == 17)
    percent = 100 * left["volume_ml"] / volumes["etiv_ml"]  # the brain-mask eTIV, not the atlas-scaling one
    assert rows["Left hippocampus"][:2] == [f"{left['volume_ml']:.2f}", f"{percent:.2f}"]
    assert rows["Intracranial volume (eTIV)"][0] == f"{volumes['etiv_ml']:.2f}"
    bpf = volumes["tissues"]["brain_parenchymal_fraction"]
    assert rows["Brain parenchyma (GM + WM)"][:2] == [f"{volumes['tissues']['parenchyma_ml']:.2f}", f"{100 * bpf:.2f}"]
    assert rows["Left hippocampus"][-1] == "warning: below adult range"
    assert rows["Grey matter"][-1] == "error: below adult range"  # the tissue flag, not label 2 of the structures
    assert rows["Right hippocampus"][-1] == "within adult range"
    assert rows["Grey matter"][3] == ""  # no left/right pair for a tissue class
    assert rows["Left hippocampus"][3] == rows["Right hippocampus"][3] != ""
    flags = body_rows(parse_tables(text), "findings-flags")
    assert [f[0] for f in flags] == ["error", "warning", "warning"]


def test_pdf_first_page_is_portrait_and_starts_with_the_title_and_findings(phantom: Phantom, tmp_path: Path) -> None:
    volumes = with_hippocampi(volumes_of(phantom))
    with matplotlib.rc_context({"pdf.compression": 0}):
        build_report(tmp_path, image=phantom.image, volumes=volumes, manifest=MANIFEST, qc=RUN_QC, header=HEADER,
                     brain_mask=phantom.brain_mask, tissue=phantom.tissue, dseg=phantom.structures)
    data = (tmp_path / "report.pdf").read_bytes()
    width, height = (float(v) for v in re.search(rb"/MediaBox\s*\[\s*0 0 ([\d.]+) ([\d.]+)", data).groups())
    assert (width, height) == pytest.approx((595.44, 841.68))  # A4 portrait
    lines = pdf_text(data).splitlines()
    assert lines[0] == "Brain MRI volumetry report"
    first_page = lines[: next(n for n, x in enumerate(lines) if re.fullmatch(r"Page 1 of \d+", x)) + 1]
    left = next(s for s in volumes["structures"] if s["label"] == 17)
    assert any(x.startswith("Left hippocampus") and f"{left['volume_ml']:.2f}" in x and "below adult range" in x
               for x in first_page)
    for measure in ("Brain parenchyma (GM + WM)", "Grey matter", "White matter", "CSF", "Right hippocampus",
                    "Left lateral ventricle", "Right lateral ventricle"):
        assert any(x.startswith(measure) for x in first_page), measure
    assert any("SNR is 9.99, below 10." in x for x in first_page)  # the QC warnings are on page 1
    assert b"/Subtype /Image" in data  # the overview picture under the findings


def test_provenance_method_of_run_and_segment_manifests() -> None:
    def method(parameters: dict[str, Any]) -> str:
        rows = dict(r[:2] for r in rhtml.provenance_section({"parameters": parameters}).tables[0].rows)
        return str(rows["Method"])

    assert method({"tissue_method": "deep", "structure_method": None, "structures": True}) == \
        "deep (tissues and structures)"
    assert method({"tissue_method": "mrf", "structure_method": "atlas", "structures": True}) == \
        "mrf (tissues), atlas (structures)"
    assert method({"tissue_method": "deep", "structure_method": None, "structures": False}) == "deep (tissues)"
    assert method({"method": "otsu"}) == "otsu"


def test_processing_time_agrees_with_the_manifest_steps(phantom: Phantom, tmp_path: Path) -> None:
    steps = [{"name": "n4", "params": {}, "seconds": 3.5}, {"name": "segment", "params": {}, "seconds": 100.0}]
    manifest = {**MANIFEST, "seconds": 113.1, "steps": steps}  # the time when the report was built
    build_report(tmp_path, image=phantom.image, volumes={}, manifest=manifest)
    text = (tmp_path / "report.html").read_text("utf-8")
    run = dict((r[0], r[1]) for r in body_rows(parse_tables(text), "run"))
    assert run["Processing time (s)"] == "103.5"  # the sum of the steps, which the final manifest.json also holds
    assert "113.1" not in text  # no total that the final manifest's larger "seconds" would contradict
    assert "whole wall-clock time" in text


def test_qc_metrics_have_readable_names_units_and_no_json(phantom: Phantom, tmp_path: Path) -> None:
    build_report(tmp_path, image=phantom.image, volumes={}, manifest={}, qc=RUN_QC)
    text = (tmp_path / "report.html").read_text("utf-8")
    rows = body_rows(parse_tables(text), "qc-metrics")
    by_name = {r[0]: r[1:] for r in rows}
    assert by_name["Brain mask volume (intracranial, incl. CSF)"] == ["1621.93", "mL"]
    assert by_name["Grey matter volume (tissue map)"] == ["791.90", "mL"]
    assert by_name["Registration: correlation with the template (NCC)"] == ["0.649", ""]
    assert by_name["Registration: voxels compared"] == ["234,951", "voxels"]
    assert by_name["Noise estimated from"][0].startswith("white-matter voxel residuals")
    assert by_name["Grey/white contrast-to-noise ratio (|GM − WM mean| / noise SD)"][0].startswith("—")
    assert len(rows) == 10  # brain_volume_ml (old name of brain_mask_ml) and the reasons are not rows
    for row in rows:
        assert "_" not in row[0] and not any(c in "".join(row) for c in "{}[]\""), row


def test_etiv_and_parenchyma_figures_are_explained(phantom: Phantom, tmp_path: Path) -> None:
    volumes = {**volumes_of(phantom), "etiv_affine_ml": 1524.0}
    table = rhtml.tissue_table(volumes)
    rows = {str(r[0]): r for r in table.rows}
    assert "eTIV, atlas-scaling estimate (cross-check, not used)" in rows
    assert "Brain parenchyma (structure map)" in rows and "Brain parenchyma (GM + WM, tissue map)" in {
        r[0].text if isinstance(r[0], rhtml.Swatch) else r[0] for r in table.rows}
    assert any("cross-check" in n and "brain-mask eTIV" in n for n in table.notes)
    assert any("structure map" in n and "reconciled with the tissue map" in n for n in table.notes)


def test_dicom_values_read_as_dates_times_ages_and_lists(phantom: Phantom, tmp_path: Path) -> None:
    header = {"PatientName": "Doe^Jane", "PatientAge": "041Y", "PatientSex": "M", "StudyDate": "20210902",
              "StudyTime": "121816", "SeriesTime": "130004.57000", "SoftwareVersions": "5.7.1\\5.7.1.1",
              "SOPClassUID": "1.2.840.10008.5.1.4.1.1.4", "PatientBirthDate": "not a date"}
    build_report(tmp_path, image=phantom.image, volumes={}, manifest={}, header=header)
    rows = dict(body_rows(parse_tables((tmp_path / "report.html").read_text("utf-8")), "header"))
    assert rows["Patient name"] == "Doe, Jane" and rows["Age"] == "41 years" and rows["Sex"] == "male"
    assert rows["Study date"] == "2021-09-02" and rows["Study time"] == "12:18:16" and rows["Series time"] == "13:00:04"
    assert rows["Software versions"] == "5.7.1, 5.7.1.1"
    assert rows["Image type (SOP class)"] == "MR Image Storage"
    assert rows["Birth date"] == "not a date"  # an invalid value is shown as stored, not dropped


PHILIPS = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "dicom" / "philips-t1-mprage" / "dicom"


@pytest.mark.skipif(not PHILIPS.is_dir(), reason="needs ../shared/data/dicom/philips-t1-mprage (a real DICOM series)")
def test_real_dicom_header_reads_for_humans(phantom: Phantom, tmp_path: Path) -> None:
    import pydicom

    from mriquant.io.dicom_series import header_fields

    ds = pydicom.dcmread(next(iter(sorted(PHILIPS.glob("*.dcm")))), stop_before_pixels=True)
    image = Image(phantom.image.array, phantom.image.affine, {"dicom": header_fields(ds)})
    build_report(tmp_path, image=image, volumes={}, manifest={})
    rows = dict(body_rows(parse_tables((tmp_path / "report.html").read_text("utf-8")), "header"))
    assert rows["Study time"] == "12:18:16" and rows["Age"] == "41 years"
    assert rows["Software versions"] == "5.7.1, 5.7.1.1"
    assert rows["Study date"] == "2021-09-02"


@pytest.mark.parametrize("fallback_font", [False, True])
def test_cjk_names_and_paths_draw_without_missing_glyphs(
    phantom: Phantom, tmp_path: Path, fallback_font: bool, monkeypatch: pytest.MonkeyPatch,
    capfd: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture,
) -> None:
    import warnings

    from mriquant.report import fonts

    if fallback_font and fonts.cjk_family() is None:
        pytest.skip("no CJK fallback font installed (Debian: apt-get install fonts-droid-fallback)")
    if not fallback_font:
        monkeypatch.setattr(fonts, "cjk_family", lambda: None)
    folder = tmp_path / "脑扫描"
    scan = folder / "t1.nii.gz"
    image = Image(phantom.image.array, phantom.image.affine, {"source": str(scan)})
    manifest = {**MANIFEST, "argv": ["run", str(scan), "-o", "out"],
                "inputs": [{"path": str(scan), "sha256": "ab" * 32, "bytes": 1, "files": 1}]}
    with warnings.catch_warnings(), matplotlib.rc_context({"pdf.compression": 0}):
        warnings.simplefilter("error")  # a missing glyph is a warning: make it fail the test
        build_report(folder / "out", image=image, volumes=volumes_of(phantom), manifest=manifest,
                     header={"PatientName": "张^伟", "PatientID": "X1"}, dseg=phantom.structures)
    assert capfd.readouterr().err == ""
    assert not [r for r in caplog.records if r.name.startswith("matplotlib") and r.levelno >= 30]
    assert "脑扫描" in (folder / "out" / "report.html").read_text("utf-8")  # the HTML keeps the text
    data = (folder / "out" / "report.pdf").read_bytes()
    text = pdf_text(data)
    if fallback_font:
        assert b"DroidSansFallback" in data and "\\u8111" not in text  # drawn with the fallback font
    else:
        assert "/\\u8111\\u626b\\u63cf/t1.nii.gz" in re.sub(r"\s+", "", text)  # 脑扫描 as code points (wrapped)
        assert "\\u5f20, \\u4f1f" in text  # the patient name on the pages
        assert any(line.startswith("Characters that the PDF's fonts cannot draw") for line in text.splitlines())


def test_figures_that_look_equal_are_explained(phantom: Phantom) -> None:
    volumes = volumes_of(phantom)
    volumes["tissues"] = {**volumes["tissues"], "gm_pv_ml": volumes["tissues"]["gm_ml"] * 0.99}
    tissue_notes = " ".join(rhtml.tissue_table(volumes).notes)
    assert "Partial-volume estimates" in tissue_notes
    structures = rhtml.structure_table(volumes)
    assert structures is not None and any(s["label"] == 24 for s in volumes["structures"])
    assert any("tissue map's CSF" in n for n in structures.notes)


def test_findings_of_an_absent_structure_are_undefined_with_its_reason(phantom: Phantom, tmp_path: Path) -> None:
    build_report(tmp_path, image=phantom.image, volumes=volumes_of(phantom), manifest={})  # no hippocampus
    parser = parse_tables((tmp_path / "report.html").read_text("utf-8"))
    rows = body_rows(parser, "findings")
    titles = parser.titles["table-findings"][1:]
    n = next(i for i, r in enumerate(rows) if r[0] == "Left hippocampus")
    assert rows[n][1].startswith("—") and rows[n][2].startswith("—")
    assert titles[n][1] == titles[n][2] == "not in the structure map"
