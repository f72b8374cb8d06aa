"""Deep models: network definitions, synthetic training data, training loops and bundled weights.

Bundled weights live in ``mriquant/models/weights/`` next to ``manifest.json``, which records for every
model its weights file, SHA-256, size, architecture config, training command, date, training data and
version. :func:`load_weights` refuses a file whose SHA-256 does not match the manifest.

Examples
--------
>>> state, config, entry = load_weights("skullstrip")  # doctest: +SKIP
>>> entry["version"]  # doctest: +SKIP
'1'

"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from mriquant.core.errors import MriquantError

__all__ = ["WEIGHTS_DIR", "WeightsError", "file_sha256", "load_weights", "read_manifest"]

#: Folder of the bundled weights and their manifest.
WEIGHTS_DIR = Path(__file__).resolve().parent / "weights"


class WeightsError(MriquantError):
    """Bundled model weights are missing, unreadable or do not match their manifest."""


def file_sha256(path: str | Path) -> str:
    """Hex SHA-256 of a file's bytes."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def read_manifest(folder: str | Path | None = None) -> dict[str, Any]:
    """Read ``manifest.json`` of a weights folder (default: the bundled one)."""
    path = Path(folder or WEIGHTS_DIR) / "manifest.json"
    if not path.is_file():
        raise WeightsError(f"Expected a weights manifest at {path}, found none; reinstall mriquant.")
    try:
        data: dict[str, Any] = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise WeightsError(
            f"Expected a JSON weights manifest at {path}, could not read it ({exc}); reinstall."
        ) from exc
    return data


def _entry(name: str, folder: Path) -> dict[str, Any]:
    models = read_manifest(folder).get("models", {})
    if name not in models:
        raise WeightsError(
            f"Expected model {name!r} in {folder / 'manifest.json'}, found only {sorted(models)}; reinstall mriquant."
        )
    entry: dict[str, Any] = models[name]
    return entry


def load_weights(
    name: str, *, folder: str | Path | None = None
) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
    """Load a bundled model's state dict after checking its SHA-256 against the manifest.

    Parameters
    ----------
    name : str
        Model name in the manifest, e.g. ``"skullstrip"``.
    folder : path, optional
        Weights folder (default :data:`WEIGHTS_DIR`).

    Returns
    -------
    state_dict : dict
        Tensors, loaded with ``torch.load(..., weights_only=True)`` (no code is unpickled).
    config : dict
        Architecture config stored in the manifest entry.
    entry : dict
        The whole manifest entry (file, sha256, version, training data, ...).

    Raises
    ------
    WeightsError
        If the file is missing or its SHA-256 differs from the manifest.

    """
    import torch

    base = Path(folder or WEIGHTS_DIR)
    entry = _entry(name, base)
    path = base / str(entry["file"])
    if not path.is_file():
        raise WeightsError(f"Expected weights file {path} listed in the manifest, found none; reinstall mriquant.")
    actual = file_sha256(path)
    if actual != entry["sha256"]:
        raise WeightsError(
            f"Expected SHA-256 {entry['sha256'][:16]}... for {path.name} (manifest), found {actual[:16]}...; "
            "the weights file is corrupted or was replaced: reinstall mriquant."
        )
    state: dict[str, Any] = torch.load(path, map_location="cpu", weights_only=True)
    return state, dict(entry["config"]), entry
