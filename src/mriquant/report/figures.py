"""Report figures: the scan in three planes with label overlays, and the change bar plot.

Figures use matplotlib's object API with the Agg canvas (no pyplot, no global backend switch), so
building a report never opens a window and never changes the caller's matplotlib state.

Display geometry
----------------
The scan is reoriented to RAS (a permutation and flips of the array axes, no interpolation) and cut
through the brain centre (the centroid of the brain mask, else of the label maps, else of the
intensities). Each panel keeps the physical voxel aspect ratio, so anisotropic scans are not
stretched. Label maps are sampled at the displayed pixel centres by world position (nearest
neighbour), so they need not share the scan's grid. In the *radiological* convention the patient's
right is on the image left; in the *neurological* convention it is on the image right. Sagittal
panels show anterior on the left in both. Every panel carries its orientation letters.
"""

from __future__ import annotations

import base64
import io
import math
import numbers
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import numpy.typing as npt
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.patches import Patch

from mriquant.core.geometry import reorient
from mriquant.core.image import Image, LabelImage
from mriquant.core.labels import LabelTable, freesurfer
from mriquant.report.fonts import SANS, fonts_context, safe_text

Convention = Literal["radiological", "neurological"]
Plane = Literal["axial", "coronal", "sagittal"]
Float2D = npt.NDArray[np.float64]

PLANES: tuple[Plane, ...] = ("axial", "coronal", "sagittal")

#: Largest displayed slice side in pixels; bigger slices are strided (keeps figures fast).
MAX_SIDE = 384
#: Opacity of label overlays.
OVERLAY_ALPHA = 0.45
#: Colour of the brain-mask contour.
MASK_COLOUR = "#ffd400"
#: Resolution of the PNG figures embedded in the HTML report.
PNG_DPI = 100
#: Legend entries shown per overlay row (the rest are counted in the legend title).
MAX_LEGEND = 28

_CONVENTION_TEXT: dict[Convention, str] = {
    "radiological": "Radiological convention: the patient's right is on the image left.",
    "neurological": "Neurological convention: the patient's right is on the image right.",
}


@dataclass(frozen=True)
class ReportFigure:
    """A figure of the report and the words that go with it.

    Attributes
    ----------
    key : str
        Identifier (also the HTML element id).
    title : str
        Short title.
    caption : str
        One or two sentences saying what is shown.
    figure : matplotlib.figure.Figure
        The figure, drawn on an Agg canvas.

    """

    key: str
    title: str
    caption: str
    figure: Figure


@dataclass(frozen=True)
class Overlay:
    """A label map drawn over the scan in its label-table colours.

    Attributes
    ----------
    name : str
        Row title, e.g. ``"Tissue"``.
    labels : LabelImage
        Label map on any grid (sampled by world position).
    table : LabelTable
        Names and colours of the labels.

    """

    name: str
    labels: LabelImage
    table: LabelTable


@dataclass(frozen=True)
class _Panel:
    """One displayed slice: pixel voxel indices in the RAS grid and how to show them."""

    plane: Plane
    ijk: npt.NDArray[np.intp]  # (3, rows, cols) indices into the RAS array, row 0 at the bottom
    aspect: float  # pixel height / pixel width in mm
    letters: tuple[str, str, str, str]  # left, right, bottom, top


def plain_text(text: str) -> str:
    r"""Return ``text`` safe for matplotlib: no mathtext (``$``), no glyph the fonts lack (written ``\uXXXX``)."""
    return safe_text(text, SANS).replace("$", r"\$")


def png_data_uri(figure: Figure, *, dpi: int = PNG_DPI) -> str:
    """Return ``figure`` as a ``data:image/png;base64,...`` URI."""
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=dpi, facecolor="white")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def label_rgb(table: LabelTable, label: int) -> tuple[int, int, int]:
    """Colour of ``label`` (0-255 per channel); labels missing from ``table`` get a fixed hashed colour."""
    if label in table:
        return table.by_id(label).rgb
    hue = (label * 0.618033988749895) % 1.0
    r, g, b = (0.5 + 0.4 * math.cos(2 * math.pi * (hue + shift)) for shift in (0.0, 1 / 3, 2 / 3))
    return round(r * 255), round(g * 255), round(b * 255)


def _unit_rgb(rgb: tuple[int, int, int]) -> tuple[float, float, float]:
    return rgb[0] / 255.0, rgb[1] / 255.0, rgb[2] / 255.0


# --- Where to cut ---


def _centroid_voxel(array: npt.NDArray[Any]) -> npt.NDArray[np.float64] | None:
    """Weighted centroid ``(3,)`` in voxel indices, from the three axis projections (no index arrays)."""
    weights = np.clip(array, 0, None) if array.dtype != np.bool_ else array
    centre = np.zeros(3)
    for axis in range(3):
        others = tuple(a for a in range(3) if a != axis)
        profile = np.asarray(weights.sum(axis=others, dtype=np.float64))
        total = float(profile.sum())
        if total <= 0:
            return None
        centre[axis] = float(profile @ np.arange(profile.size)) / total
    return centre


def brain_centre_mm(image: Image, masks: Sequence[LabelImage | None] = ()) -> npt.NDArray[np.float64]:
    """World position (RAS mm, shape (3,)) of the brain centre.

    The centroid of the first non-empty mask in ``masks`` (non-zero voxels), else the
    intensity centroid of ``image``, else the centre of its grid.
    """
    for mask in masks:
        if mask is None:
            continue
        centre = _centroid_voxel(mask.array != 0)
        if centre is not None:
            return _to_world(mask.affine, centre)
    centre = _centroid_voxel(np.asarray(image.array, dtype=np.float32))
    if centre is None:
        centre = (np.asarray(image.shape, np.float64) - 1) / 2
    return _to_world(image.affine, centre)


def _to_world(affine: npt.NDArray[np.float64], ijk: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
    return np.asarray(affine[:3, :3] @ ijk + affine[:3, 3], dtype=np.float64)


def _cut_index(ras: Image, centre_mm: npt.NDArray[np.float64]) -> tuple[int, int, int]:
    """Voxel index of ``centre_mm`` in the RAS grid, clipped into the field of view."""
    ijk = np.linalg.solve(ras.affine[:3, :3], centre_mm - ras.affine[:3, 3])
    clipped = [int(np.clip(round(float(v)), 0, n - 1)) for v, n in zip(ijk, ras.shape, strict=True)]
    return clipped[0], clipped[1], clipped[2]


# --- Panel geometry ---


def _stride(rows: int, cols: int) -> int:
    return max(1, math.ceil(max(rows, cols) / MAX_SIDE))


def _panel(ras: Image, plane: Plane, cut: tuple[int, int, int], convention: Convention) -> _Panel:
    """Pixel-to-voxel map of one plane: rows run bottom to top, columns left to right on screen."""
    nx, ny, nz = ras.shape
    sx, sy, sz = ras.spacing
    radiological = convention == "radiological"
    if plane == "axial":  # columns x, rows y (anterior up)
        col_n, row_n, aspect = nx, ny, sy / sx
        letters = ("R", "L", "P", "A") if radiological else ("L", "R", "P", "A")
    elif plane == "coronal":  # columns x, rows z (superior up)
        col_n, row_n, aspect = nx, nz, sz / sx
        letters = ("R", "L", "I", "S") if radiological else ("L", "R", "I", "S")
    else:  # sagittal: columns y with anterior on the left, rows z
        col_n, row_n, aspect = ny, nz, sz / sy
        letters = ("A", "P", "I", "S")
    step = _stride(row_n, col_n)
    cols = np.arange(0, col_n, step)
    rows = np.arange(0, row_n, step)
    if radiological or plane == "sagittal":
        cols = cols[::-1]  # high x (right) or high y (anterior) on the screen left
    rr, cc = np.meshgrid(rows, cols, indexing="ij")
    i, j, k = cut
    if plane == "axial":
        ijk = np.stack([cc, rr, np.full_like(rr, k)])
    elif plane == "coronal":
        ijk = np.stack([cc, np.full_like(rr, j), rr])
    else:
        ijk = np.stack([np.full_like(rr, i), cc, rr])
    return _Panel(plane, ijk.astype(np.intp), aspect, letters)


def _image_slice(ras: Image, panel: _Panel) -> Float2D:
    i, j, k = panel.ijk
    return np.asarray(ras.array[i, j, k], dtype=np.float64)


def _label_slice(labels: LabelImage, ras: Image, panel: _Panel) -> npt.NDArray[np.int64]:
    """Labels at the panel's pixel centres, by world position (nearest voxel; 0 outside the map)."""
    points = panel.ijk.reshape(3, -1).astype(np.float64)
    world = ras.affine[:3, :3] @ points + ras.affine[:3, 3:4]
    inverse = np.linalg.inv(labels.affine)
    vox = np.rint(inverse[:3, :3] @ world + inverse[:3, 3:4]).astype(np.intp)
    inside = np.all((vox >= 0) & (vox < np.asarray(labels.shape)[:, None]), axis=0)
    values = np.zeros(points.shape[1], np.int64)
    values[inside] = labels.array[vox[0, inside], vox[1, inside], vox[2, inside]]
    return values.reshape(panel.ijk.shape[1:])


def _window(slices: Sequence[Float2D], masks: Sequence[npt.NDArray[np.bool_] | None]) -> tuple[float, float]:
    """Display range: 1st to 99.5th percentile inside the mask (or of all pixels)."""
    chosen = [s[m] if m is not None and m.any() else s.ravel() for s, m in zip(slices, masks, strict=True)]
    values = np.concatenate(chosen)
    values = values[np.isfinite(values)]
    if values.size == 0:
        return 0.0, 1.0
    lo, hi = (float(v) for v in np.percentile(values, [1.0, 99.5]))
    return lo, hi if hi > lo else lo + 1.0


def _rgba(labels: npt.NDArray[np.int64], table: LabelTable) -> npt.NDArray[np.float64]:
    """RGBA overlay ``(rows, cols, 4)``: label colours at :data:`OVERLAY_ALPHA`, background clear."""
    values, inverse = np.unique(labels, return_inverse=True)
    colours = np.zeros((values.size, 4))
    for n, value in enumerate(values):
        if value != 0:
            colours[n, :3] = np.asarray(label_rgb(table, int(value))) / 255.0
            colours[n, 3] = OVERLAY_ALPHA
    return np.asarray(colours[inverse.reshape(labels.shape)])


# --- Drawing ---


def _draw_panel(
    ax: Axes,
    gray: Float2D,
    panel: _Panel,
    window: tuple[float, float],
    overlay: npt.NDArray[np.float64] | None,
    mask: npt.NDArray[np.bool_] | None,
) -> None:
    ax.imshow(gray, cmap="gray", vmin=window[0], vmax=window[1], origin="lower",
              aspect=panel.aspect, interpolation="nearest")
    if overlay is not None:
        ax.imshow(overlay, origin="lower", aspect=panel.aspect, interpolation="nearest")
    if mask is not None and mask.any() and not mask.all():
        ax.contour(mask.astype(np.float32), levels=[0.5], colors=MASK_COLOUR, linewidths=0.8)
    ax.set_axis_off()
    left, right, bottom, top = panel.letters
    style: dict[str, Any] = {"color": "white", "fontsize": 9, "fontweight": "bold", "transform": ax.transAxes}
    ax.text(0.02, 0.5, left, ha="left", va="center", **style)
    ax.text(0.98, 0.5, right, ha="right", va="center", **style)
    ax.text(0.5, 0.02, bottom, ha="center", va="bottom", **style)
    ax.text(0.5, 0.98, top, ha="center", va="top", **style)


def _legend(ax: Axes, present: set[int], table: LabelTable, *, with_mask: bool) -> None:
    ax.set_axis_off()
    labels = sorted(v for v in present if v != 0)
    handles = [
        Patch(facecolor=_unit_rgb(label_rgb(table, v)), edgecolor="black", linewidth=0.3,
              label=plain_text(f"{v} {table.name_of(v)}"))
        for v in labels[:MAX_LEGEND]
    ]
    if with_mask:
        handles.append(Patch(facecolor="none", edgecolor=MASK_COLOUR, linewidth=1.5, label="brain mask"))
    if not handles:
        return
    title = None if len(labels) <= MAX_LEGEND else f"first {MAX_LEGEND} of {len(labels)} labels"
    ax.legend(handles=handles, loc="center left", fontsize=7, frameon=False, title=title, title_fontsize=7,
              ncol=1 if len(handles) <= 16 else 2, handlelength=1.4, columnspacing=0.8)


def _new_figure(width: float, height: float) -> Figure:
    figure = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(figure)
    return figure


def planes_figure(
    image: Image,
    *,
    overlays: Sequence[Overlay] = (),
    brain_mask: LabelImage | None = None,
    centre_mm: npt.NDArray[np.float64] | None = None,
    convention: Convention = "radiological",
    key: str = "planes",
    title: str = "Scan",
    legend: bool = True,
) -> ReportFigure:
    """The scan in axial, coronal and sagittal planes through the brain centre.

    Parameters
    ----------
    image : Image
        The scan, any orientation and voxel size.
    overlays : sequence of Overlay
        One figure row per overlay (tissue, structures); with none, one row of the plain scan.
    brain_mask : LabelImage, optional
        Drawn as a contour on every panel.
    centre_mm : numpy.ndarray, shape (3,), optional
        World point (RAS mm) the planes pass through; default :func:`brain_centre_mm`.
    convention : {"radiological", "neurological"}
        Left-right display convention, stated on the figure.
    key, title : str
        Figure identifier and title.
    legend : bool
        Draw the label legend beside each row (False: a compact figure, e.g. the PDF's first-page overview).

    Returns
    -------
    ReportFigure

    Examples
    --------
    >>> from mriquant.testing import make_phantom
    >>> ph = make_phantom(spacing=(6.0, 6.0, 6.0), seed=1)
    >>> planes_figure(ph.image, brain_mask=ph.brain_mask).key
    'planes'

    """
    with fonts_context():
        return _planes_figure(image, overlays=overlays, brain_mask=brain_mask, centre_mm=centre_mm,
                              convention=convention, key=key, title=title, legend=legend)


def _planes_figure(
    image: Image,
    *,
    overlays: Sequence[Overlay],
    brain_mask: LabelImage | None,
    centre_mm: npt.NDArray[np.float64] | None,
    convention: Convention,
    key: str,
    title: str,
    legend: bool,
) -> ReportFigure:
    ras = reorient(image, "RAS")
    if centre_mm is None:
        centre_mm = brain_centre_mm(image, [brain_mask, *(o.labels for o in overlays)])
    cut = _cut_index(ras, centre_mm)
    panels = [_panel(ras, plane, cut, convention) for plane in PLANES]
    grays = [_image_slice(ras, p) for p in panels]
    masks = [None if brain_mask is None else _label_slice(brain_mask, ras, p) != 0 for p in panels]
    window = _window(grays, masks)
    rows: Sequence[Overlay | None] = list(overlays) or [None]
    with_legend = legend and (bool(overlays) or brain_mask is not None)
    figure = _new_figure(11.0 if with_legend else 9.0, 0.6 + 3.1 * len(rows))
    axes = figure.subplots(len(rows), 3 + with_legend, squeeze=False,
                           width_ratios=[1.0, 1.0, 1.0, 0.62][: 3 + with_legend])
    for row, overlay in zip(axes, rows, strict=True):
        present: set[int] = set()
        for ax, panel, gray, mask in zip(row[:3], panels, grays, masks, strict=True):
            colours = None
            if overlay is not None:
                labels = _label_slice(overlay.labels, ras, panel)
                present.update(int(v) for v in np.unique(labels))
                colours = _rgba(labels, overlay.table)
            _draw_panel(ax, gray, panel, window, colours, mask)
            ax.set_title(plain_text(f"{overlay.name if overlay else title} — {panel.plane}"), fontsize=9)
        if with_legend:
            _legend(row[3], present, overlay.table if overlay else freesurfer(), with_mask=brain_mask is not None)
    x, y, z = (round(float(v)) for v in centre_mm)  # round(): no "-0"
    figure.suptitle(plain_text(f"{title}: planes through ({x}, {y}, {z}) mm RAS. "
                               + _CONVENTION_TEXT[convention]), fontsize=10)
    caption = (f"{title} in three planes through the brain centre, with "
               + (", ".join(o.name.lower() for o in overlays) or "no") + " label overlays"
               + (" and the brain-mask contour (yellow). " if brain_mask is not None else ". ")
               + _CONVENTION_TEXT[convention] + " Voxel aspect ratio preserved.")
    return ReportFigure(key, title, caption, figure)


def change_figure(change: Mapping[str, Any], *, key: str = "change") -> ReportFigure | None:
    """Horizontal bar plot of the percentage change of each structure (and PBVC).

    Parameters
    ----------
    change : mapping
        ``{"interval_years", "pbvc_percent", "structures": [{"label", "name", "change_percent", ...}]}``.
    key : str
        Figure identifier.

    Returns
    -------
    ReportFigure or None
        None when there is no numeric change to plot.

    """
    with fonts_context():
        return _change_figure(change, key)


def _change_figure(change: Mapping[str, Any], key: str) -> ReportFigure | None:
    names: list[str] = []
    values: list[float] = []
    colours: list[tuple[float, float, float]] = []
    pbvc = _finite(change.get("pbvc_percent"))
    if pbvc is not None:
        names.append("Whole brain (PBVC)")
        values.append(pbvc)
        colours.append((0.3, 0.3, 0.3))
    for row in change.get("structures") or []:
        value = _finite(row.get("change_percent"))
        if value is None:
            continue
        label = row.get("label")
        names.append(plain_text(str(row.get("name") or f"label {label}")))
        values.append(value)
        colours.append(_unit_rgb(label_rgb(freesurfer(), label) if isinstance(label, int) else (128, 128, 128)))
    if not values:
        return None
    figure = _new_figure(9.0, 1.4 + 0.26 * len(values))
    ax = figure.subplots()
    positions = np.arange(len(values))[::-1]
    ax.barh(positions, values, color=colours, edgecolor="black", linewidth=0.4)
    ax.set_yticks(positions, names, fontsize=8)
    ax.axvline(0.0, color="black", linewidth=0.8)
    ax.set_xlabel("Volume change, follow-up vs baseline (%)")
    interval = _finite(change.get("interval_years"))
    when = f"over {interval:.2f} years" if interval is not None else "interval unknown"
    ax.set_title(f"Volume change {when}", fontsize=10)
    ax.grid(axis="x", linewidth=0.3)
    caption = "Percentage volume change of each structure from baseline to follow-up; grey: whole-brain PBVC."
    return ReportFigure(key, "Volume change", caption, figure)


def _finite(value: Any) -> float | None:
    if isinstance(value, bool | np.bool_) or not isinstance(value, numbers.Real) or not math.isfinite(value):
        return None
    return float(value)
