"""What this installation can do: formats, methods, models, label tables and versions."""

from __future__ import annotations

from typing import Any

from mriquant import __version__
from mriquant.core.labels import tables
from mriquant.io.registry import FORMAT_NAMES
from mriquant.manifest import versions

#: Segmentation methods available in this version: name -> (kind, description, reference).
METHODS: dict[str, tuple[str, str, str]] = {}

#: Bundled models: name -> description.
MODELS: dict[str, str] = {}


def describe() -> dict[str, Any]:
    """Return everything ``mriquant info`` prints, as a JSON-serialisable dictionary."""
    return {
        "version": __version__,
        "formats": dict(FORMAT_NAMES),
        "write_formats": {"nifti": "NIfTI-1 (.nii, .nii.gz), native grid, exact affine"},
        "methods": [{"name": n, "kind": k, "description": d, "reference": r} for n, (k, d, r) in METHODS.items()],
        "models": [{"name": n, "description": d} for n, d in MODELS.items()],
        "label_tables": {name: t.as_dict() for name, t in tables().items()},
        "label_maps": _label_maps(),
        "versions": versions(),
    }


def _label_maps() -> list[str]:
    from mriquant.evaluate import shipped_maps

    return sorted(shipped_maps())


def render_text(info: dict[str, Any]) -> str:
    """Render :func:`describe`'s dictionary as readable text."""
    lines = [f"mriquant {info['version']}", "", "Input formats:"]
    lines += [f"  {k:10s} {v}" for k, v in info["formats"].items()]
    lines += ["", "Segmentation methods:"]
    lines += [f"  {m['name']:15s} {m['kind']:10s} {m['description']} [{m['reference']}]" for m in info["methods"]]
    if not info["methods"]:
        lines.append("  (none in this version yet)")
    lines += ["", "Models:"] + ([f"  {m['name']}: {m['description']}" for m in info["models"]] or ["  (none)"])
    lines += ["", "Label tables:"]
    for name, rows in info["label_tables"].items():
        lines.append(
            f"  {name}: {len(rows)} labels ({', '.join(str(r['id']) for r in rows[:12])}"
            f"{', ...' if len(rows) > 12 else ''})"
        )
    lines += ["", "Label mappings: " + (", ".join(info["label_maps"]) or "(none)")]
    lines += ["", "Versions:"] + [f"  {k:20s} {v}" for k, v in info["versions"].items()]
    return "\n".join(lines)
