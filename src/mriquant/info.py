"""What this installation can do: formats, methods, models, label tables and versions."""

from __future__ import annotations

from typing import Any

from mriquant import __version__
from mriquant.core.labels import tables
from mriquant.io.registry import FORMAT_NAMES
from mriquant.manifest import versions


def _methods() -> list[dict[str, Any]]:
    """Every registered segmentation method with its one-line description, reference and options."""
    import dataclasses

    from mriquant.segment.base import registry

    rows = []
    for name, cls in sorted(registry().items()):
        opts = cls.options_type
        fields = dataclasses.fields(opts) if dataclasses.is_dataclass(opts) else ()
        rows.append(
            {
                "name": name,
                "kind": cls.kind,
                "description": cls.description,
                "reference": cls.reference,
                "options": {
                    f.name: {"default": _jsonable(f.default), "help": f.metadata.get("help", "")} for f in fields
                },
            }
        )
    return rows


def _jsonable(value: Any) -> Any:
    import dataclasses

    if value is dataclasses.MISSING:
        return None
    return value if isinstance(value, str | int | float | bool | type(None) | list | tuple) else str(value)


#: Fields of a bundled model's manifest entry that ``info`` shows.
MODEL_FIELDS = ("file", "version", "date", "licence", "sha256", "size_bytes", "description")


def _models() -> list[dict[str, Any]]:
    """Bundled model weights from the models' manifest (empty when none ship); absent fields are None."""
    from mriquant.models import WeightsError, read_manifest

    try:
        models = read_manifest().get("models", {})
    except WeightsError:
        return []
    return [{"name": name, **{k: entry.get(k) for k in MODEL_FIELDS}} for name, entry in sorted(models.items())]


def describe() -> dict[str, Any]:
    """Return everything ``mriquant info`` prints, as a JSON-serialisable dictionary."""
    return {
        "version": __version__,
        "formats": dict(FORMAT_NAMES),
        "write_formats": {"nifti": "NIfTI-1 (.nii, .nii.gz), native grid, exact affine"},
        "methods": _methods(),
        "models": _models(),
        "label_tables": {name: t.as_dict() for name, t in tables().items()},
        "label_maps": _label_maps(),
        "versions": versions(),
    }


def _label_maps() -> list[str]:
    from mriquant.evaluate import shipped_maps

    return sorted(shipped_maps())


def _model_lines(model: dict[str, Any]) -> list[str]:
    """Two lines per model: name, version, date and licence; then file, size and SHA-256."""
    date = str(model.get("date") or "date not recorded")[:10]
    licence = model.get("licence") or "not recorded in the weights manifest"
    size = model.get("size_bytes")
    size_text = f"{size / 1e6:.1f} MB" if isinstance(size, int | float) else "size not recorded"
    lines = [f"  {model['name']}: version {model.get('version') or '?'} ({date}), licence: {licence}",
             f"    {model.get('file') or '?'}, {size_text}, sha256 {model.get('sha256') or 'not recorded'}"]
    if model.get("description"):
        lines.insert(1, f"    {model['description']}")
    return lines


def _label_lines(name: str, rows: list[dict[str, Any]]) -> list[str]:
    """A label table: one line per label with id, name and RGB colour (0-255)."""
    width = max((len(str(r["name"])) for r in rows), default=0)
    lines = [f"  {name} ({len(rows)} labels; id, name, RGB colour):"]
    lines += [f"    {r['id']:>4}  {r['name']:<{width}}  ({', '.join(f'{c:3d}' for c in r['rgb'])})" for r in rows]
    return lines


def render_text(info: dict[str, Any]) -> str:
    """Render :func:`describe`'s dictionary as readable text."""
    lines = [f"mriquant {info['version']}", "", "Input formats:"]
    lines += [f"  {k:10s} {v}" for k, v in info["formats"].items()]
    lines += ["", "Segmentation methods:"]
    lines += [f"  {m['name']:15s} {m['kind']:10s} {m['description']} [{m['reference']}]" for m in info["methods"]]
    if not info["methods"]:
        lines.append("  (none in this version yet)")
    lines += ["", "Bundled models:"]
    lines += [line for m in info["models"] for line in _model_lines(m)] or ["  (none)"]
    lines += ["", "Label tables:"]
    for name, rows in info["label_tables"].items():
        lines += _label_lines(name, rows)
    lines += ["", "Label mappings: " + (", ".join(info["label_maps"]) or "(none)")]
    lines += ["", "Versions:"] + [f"  {k:20s} {v}" for k, v in info["versions"].items()]
    return "\n".join(lines)
