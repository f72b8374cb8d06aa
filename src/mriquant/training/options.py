"""Options of ``mriquant train`` (kept free of PyTorch so the command line starts fast)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from mriquant.core.errors import InputError

__all__ = ["DEFAULTS", "add_arguments", "resolve"]


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The options of ``mriquant train`` (shared by the CLI and ``python -m``)."""
    p.add_argument("data", type=Path, nargs="?", help="folder of (image, label map) pairs (see --image-suffix)")
    p.add_argument("--label-maps", help="glob of FreeSurfer label maps without images (synthesis only)")
    p.add_argument("--config", type=Path, help="JSON file of options (keys as below, e.g. minutes); flags override")
    p.add_argument("-o", "--output", type=Path, required=True, help="run folder (checkpoints, logs, config)")
    p.add_argument("--image-suffix", default=None, help="image file suffix in DATA (default _SS.nii.gz)")
    p.add_argument("--label-suffix", default=None, help="label file suffix in DATA (default _glm.nii.gz)")
    p.add_argument("--mask-suffix", default=None, help="brain mask suffix, used when present (default _mask.nii.gz)")
    p.add_argument("--map", default=None, help="label map of the pairs to FreeSurfer ids (shipped name or TSV)")
    p.add_argument("--holdout", default=None, help="comma-separated case names never used (test set)")
    p.add_argument("--validation", default=None, help="comma-separated case names for checkpoint selection")
    p.add_argument("--minutes", type=float, default=None, help="training time budget (default 60)")
    p.add_argument("--max-steps", type=int, default=None, help="stop after this many steps (default 0: time only)")
    p.add_argument("--validate-every", type=int, default=None, help="steps between validations (default 300)")
    p.add_argument("--lr", type=float, default=None, help="peak learning rate (default 2e-3)")
    p.add_argument("--seed", type=int, default=None, help="random seed (default 0)")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default 0: all cores)")
    p.add_argument("--real-fraction", type=float, default=None,
                   help="share of draws of a case with an image that use the real image (default 0.6)")
    p.add_argument("--paired-share", type=float, default=None,
                   help="share of draws from cases with an image, the rest label maps alone (default 0.6)")
    p.add_argument("--resume", action="store_true", help="continue from OUTPUT/checkpoint.pt")
    p.add_argument("--init", default=None,
                   help="start from these weights ('default': the bundled ones, or a folder as for segment "
                        "--weights) instead of random ones; a fresh schedule and optimiser")
    p.add_argument("--export", type=Path, default=None, help="write the best weights + manifest entry here")
    p.add_argument("--licence", default=None, help="terms the training data puts on the weights (recorded)")


#: Defaults of the options a config file may set.
DEFAULTS: dict[str, Any] = {
    "image_suffix": "_SS.nii.gz", "label_suffix": "_glm.nii.gz", "mask_suffix": "_mask.nii.gz", "map": None,
    "holdout": "", "validation": "", "minutes": 60.0, "max_steps": 0, "validate_every": 300, "lr": 2e-3,
    "seed": 0, "threads": 0, "real_fraction": 0.6, "paired_share": 0.6, "label_maps": None, "data": None,
    "licence": "", "init": None,
}  # fmt: skip


def resolve(args: argparse.Namespace) -> argparse.Namespace:
    """Fill unset options from ``--config`` (JSON) and then :data:`DEFAULTS`; check them."""
    config: dict[str, Any] = {}
    if args.config is not None:
        try:
            config = json.loads(args.config.read_text())
        except (OSError, json.JSONDecodeError) as exc:
            raise InputError(f"Expected a JSON training config at {args.config}, could not read it ({exc}).") from exc
        unknown = sorted(set(config) - set(DEFAULTS))
        if unknown:
            raise InputError(f"Expected config keys from {sorted(DEFAULTS)}, found {unknown}; fix {args.config}.")
    for key, default in DEFAULTS.items():
        if getattr(args, key, None) is None:
            value = config.get(key, default)
            setattr(args, key, Path(value) if key == "data" and value is not None else value)
    if args.minutes <= 0 and args.max_steps <= 0:
        raise InputError(f"Expected --minutes > 0 or --max-steps > 0, found {args.minutes} and {args.max_steps}.")
    if not (0.0 <= args.real_fraction <= 1.0 and 0.0 <= args.paired_share <= 1.0):
        raise InputError("Expected --real-fraction and --paired-share in [0, 1], found "
                         f"{args.real_fraction} and {args.paired_share}.")  # fmt: skip
    if args.minutes <= 0:
        args.minutes = float("inf")
    return args


