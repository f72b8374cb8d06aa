"""QC results in words: each metric with a readable name, its unit and a formatted value.

:func:`metric_rows` turns ``qc["metrics"]`` (see :func:`mriquant.quantify.qc.quality_control`) into
``(name, value, unit)`` rows: nested groups (tissue volumes, registration) become one row per entry, a
None metric becomes a :class:`~mriquant.report.cells.Missing` cell with the reason QC recorded, and no
cell ever holds JSON. Keys this module does not know are shown humanised, their values formatted the
same way.

Examples
--------
>>> rows = metric_rows({"snr": 78.7301, "brain_mask_ml": 1621.932, "registration": {"ncc": 0.6487}})
>>> [r[:2] for r in rows]  # doctest: +NORMALIZE_WHITESPACE
[('Signal-to-noise ratio (white-matter mean / noise SD)', '78.7'),
 ('Brain mask volume (intracranial, incl. CSF)', '1621.93'),
 ('Registration: correlation with the template (NCC)', '0.649')]

"""

from __future__ import annotations

import math
import numbers
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from mriquant.report.cells import Missing

__all__ = ["METRICS", "MetricText", "metric_rows"]


@dataclass(frozen=True)
class MetricText:
    """How one QC metric reads: name, unit (``""`` for a ratio) and decimals."""

    name: str
    unit: str = ""
    digits: int = 2


#: Known metrics by key (``"group.key"`` inside a group such as ``registration``).
METRICS: dict[str, MetricText] = {
    "snr": MetricText("Signal-to-noise ratio (white-matter mean / noise SD)", digits=1),
    "cnr_gm_wm": MetricText("Grey/white contrast-to-noise ratio (|GM − WM mean| / noise SD)", digits=1),
    "noise_sd": MetricText("Noise standard deviation", "image units", 2),
    "snr_method": MetricText("Noise estimated from"),
    "background_voxels": MetricText("Air voxels used for the noise estimate", "voxels", 0),
    "wm_mean": MetricText("Mean white-matter intensity", "image units", 1),
    "gm_mean": MetricText("Mean grey-matter intensity", "image units", 1),
    "brain_mask_ml": MetricText("Brain mask volume (intracranial, incl. CSF)", "mL"),
    "brain_mask_border_mm2": MetricText("Brain mask area on the edges of the field of view", "mm²", 1),
    "tissue_volumes_ml.CSF": MetricText("CSF volume (tissue map)", "mL"),
    "tissue_volumes_ml.GM": MetricText("Grey matter volume (tissue map)", "mL"),
    "tissue_volumes_ml.WM": MetricText("White matter volume (tissue map)", "mL"),
    "parenchyma_ml": MetricText("Brain parenchyma volume (GM + WM, tissue map)", "mL"),
    "registration.ncc": MetricText("Registration: correlation with the template (NCC)", digits=3),
    "registration.correlation": MetricText("Registration: correlation with the template", digits=3),
    "registration.nmi": MetricText("Registration: normalised mutual information", digits=3),
    "registration.voxels": MetricText("Registration: voxels compared", "voxels", 0),
    "registration.min_scale": MetricText("Registration: smallest scale factor", digits=3),
    "registration.max_scale": MetricText("Registration: largest scale factor", digits=3),
}
#: Keys not shown: the reasons feed the undefined cells.
HIDDEN = frozenset({"reasons"})
#: Old names of metrics -> their current names (an old name is shown only when the new one is absent).
RENAMED = {"brain_volume_ml": "brain_mask_ml"}
#: Words for the values of ``snr_method``.
NOISE_METHODS = {
    "background_rayleigh": "air around the head (Rayleigh median)",
    "background_gaussian": "air around the head (Gaussian MAD)",
    "wm_residual": "white-matter voxel residuals (no usable air)",
}
#: Units read from a key's ending when the key is not in :data:`METRICS`.
_UNIT_SUFFIXES = (("_ml", "mL"), ("_mm2", "mm²"), ("_mm", "mm"), ("_s", "s"), ("_percent", "%"))


def _words(key: str) -> str:
    """``"brain_mask_border_mm2"`` -> ``"Brain mask border mm2"``; ``"GM"`` stays ``"GM"``."""
    words = re.sub(r"(?<=[a-z0-9])(?=[A-Z])", " ", key).replace("_", " ").split()
    text = " ".join(w if w.isupper() else w.lower() for w in words)
    return text[:1].upper() + text[1:]


def _split_unit(key: str) -> tuple[str, str]:
    """``"parenchyma_ml"`` -> ``("parenchyma", "mL")``; a key without a unit ending -> ``(key, "")``."""
    for suffix, unit in _UNIT_SUFFIXES:
        if key.endswith(suffix):
            return key.removesuffix(suffix), unit
    return key, ""


def _guess(key: str, group: str | None) -> MetricText:
    """Name and unit of a key this module does not list, from its words and ending (or its group's)."""
    base, unit = _split_unit(key)
    group_base, group_unit = _split_unit(group) if group else ("", "")
    unit = unit or group_unit
    name = f"{_words(group_base)}: {_words(base)}" if group else _words(base)
    return MetricText(name, unit, 2 if unit else 3)


def _value(key: str, value: Any, text: MetricText, reason: str | None) -> Any:
    """The formatted cell (a str, or a Missing cell when the metric is undefined)."""
    if value is None:
        return Missing(reason or "not measured")
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, numbers.Real):
        if not math.isfinite(value):
            return Missing(f"{reason or 'undefined'} (not a finite number)")
        return f"{float(value):,.{text.digits}f}" if text.unit == "voxels" else f"{float(value):.{text.digits}f}"
    if key == "snr_method":
        return NOISE_METHODS.get(str(value), str(value))
    if isinstance(value, list | tuple):
        return ", ".join(str(v) for v in value)
    return str(value)


def metric_rows(metrics: Mapping[str, Any]) -> list[tuple[Any, ...]]:
    """``(name, value, unit)`` rows of ``qc["metrics"]``, in the metrics' order, groups flattened.

    Parameters
    ----------
    metrics : mapping
        ``qc["metrics"]``; ``metrics["reasons"]`` (metric -> why it is None) gives the undefined cells' notes.

    Returns
    -------
    list of tuple
        One ``(name, value, unit)`` per metric; ``value`` is text or a Missing cell.

    """
    found = metrics.get("reasons")
    reasons: Mapping[str, Any] = found if isinstance(found, Mapping) else {}
    rows: list[tuple[Any, ...]] = []
    for old, new in RENAMED.items():
        if old in metrics and new not in metrics:
            metrics = {(new if k == old else k): v for k, v in metrics.items()}
            reasons = {(new if k == old else k): v for k, v in reasons.items()}
    for key, value in metrics.items():
        if key in HIDDEN or key in RENAMED:
            continue
        if isinstance(value, Mapping):
            for sub, inner in value.items():
                full = f"{key}.{sub}"
                text = METRICS.get(full) or _guess(str(sub), key)
                rows.append((text.name, _value(full, inner, text, reasons.get(key)), text.unit))
            continue
        text = METRICS.get(key) or _guess(key, None)
        rows.append((text.name, _value(key, value, text, reasons.get(key)), text.unit))
    return rows
