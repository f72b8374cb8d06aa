r"""Train the dual-task segmentation network (``mriquant train``) on a CPU (or a GPU when there is one).

Usage::

    mriquant train [DIR] [--label-maps 'GLOB'] -o RUNDIR [--config FILE] [--minutes 90] [--seed 0] [--resume]

``DIR`` is a folder of (image, label map) pairs named ``<stem><image-suffix>`` and
``<stem><label-suffix>`` (optional brain masks ``<stem><mask-suffix>``); ``--map`` converts their label
ids to FreeSurfer ids (e.g. ``miccai2012-to-freesurfer``). ``--label-maps`` adds FreeSurfer label maps
without images (synthesis only). Every case is affinely registered to MNI152 once and cached in
``RUNDIR/cases``. ``--holdout`` names cases never used (the test set); ``--validation`` names cases used
only to pick the best checkpoint (mean Dice of the 15 subcortical structures on the real image).

``RUNDIR`` receives ``config.json`` (architecture, augmentation, data, command), ``checkpoint.pt`` (latest,
for ``--resume``), ``best.pt`` and ``log.jsonl`` (loss and validation per step); ``--export DIR`` writes the
best weights and a manifest entry (SHA-256) for shipping. Deterministic for a seed on a given machine and
thread count (``torch.use_deterministic_algorithms``).

The shipped weights (``mriquant/models/weights/deep_*``) come from the command recorded in their manifest
entry.
"""

from __future__ import annotations

import argparse
import glob
import json
import math
import os
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F  # noqa: N812

from mriquant.core.errors import InputError, MriquantError
from mriquant.models.deep_data import IGNORE, STRUCTURES
from mriquant.models.deep_net import (
    PRIOR_ENTRY,
    DualTaskNet,
    build_network,
    default_config,
    predict_box,
    split_heads,
)
from mriquant.models.unet import UNetConfig
from mriquant.training.deep_augment import AugmentConfig, DeepSampler
from mriquant.training.deep_cases import TrainingCase, load_case, prepare_case
from mriquant.training.options import add_arguments, resolve

__all__ = ["SUBCORTICAL", "dice_scores", "main", "parse_args", "train"]

#: The 15 structures of the benchmark: thalamus, caudate, putamen, pallidum, hippocampus, amygdala,
#: lateral ventricle (left and right) and brainstem.
SUBCORTICAL: tuple[int, ...] = (10, 11, 12, 13, 17, 18, 4, 49, 50, 51, 52, 53, 54, 43, 16)


def _log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line options (``python -m mriquant.training.deep``)."""
    p = argparse.ArgumentParser(prog="mriquant train", description=__doc__.split("\n")[0])
    add_arguments(p)
    return p.parse_args(argv)


# ----------------------------------------------------------------------------------------------------------------------
# data


def _sources(args: argparse.Namespace) -> list[tuple[str, Path, Path | None, Path | None]]:
    """(name, labels, image or None, mask or None) for every training source."""
    out: list[tuple[str, Path, Path | None, Path | None]] = []
    if args.data is not None:
        if not args.data.is_dir():
            raise InputError(f"Expected a folder of image/label pairs at {args.data}, found none; check --pairs.")
        for image in sorted(args.data.glob(f"*{args.image_suffix}")):
            stem = image.name[: -len(args.image_suffix)]
            labels = args.data / f"{stem}{args.label_suffix}"
            mask = args.data / f"{stem}{args.mask_suffix}"
            if labels.is_file():
                out.append((stem, labels, image, mask if mask.is_file() else None))
    if args.label_maps:
        out += [(Path(p).name.split(".")[0], Path(p), None, None) for p in sorted(glob.glob(args.label_maps))]
    if not out:
        raise InputError("Expected training data (--pairs with matching image/label files, or --label-maps), "
                         "found none; check the folder and suffixes.")  # fmt: skip
    return out


def load_cases(args: argparse.Namespace) -> list[TrainingCase]:
    """Prepare (register, crop; cached in RUNDIR/cases) every source not held out."""
    from mriquant.evaluate import apply_map, load_map
    from mriquant.io import read_image, read_labels

    sources = _sources(args)  # checked before anything is written
    mapping = load_map(args.map) if args.map else None
    cache = args.output / "cases"
    cache.mkdir(parents=True, exist_ok=True)
    held = set(filter(None, args.holdout.split(",")))
    cases = []
    for name, labels_path, image_path, mask_path in sources:
        if name in held:
            continue
        path = cache / f"{name}.npz"
        if not path.exists():
            t0 = time.perf_counter()
            labels = read_labels(labels_path)
            if mapping is not None and image_path is not None:
                labels = apply_map(labels, mapping)
            image = read_image(image_path) if image_path is not None else None
            mask = read_labels(mask_path) if mask_path is not None else None
            prepare_case(name, labels, image, mask).save(path)
            _log(f"prepared {name} in {time.perf_counter() - t0:.1f} s")
        cases.append(load_case(path))
    return cases


# ----------------------------------------------------------------------------------------------------------------------
# loss and validation


def _dice_loss(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """1 - mean soft Dice over the classes present in the target (ignored voxels left out).

    Per class ``c``: ``2 sum_{t = c} p_c / (sum p_c + #{t = c})``, with the intersection gathered at each
    voxel's true class (no one-hot volume).
    """
    n_classes = logits.shape[1]
    probs = torch.softmax(logits, 1).movedim(1, -1).reshape(-1, n_classes)
    flat = target.reshape(-1)
    valid = flat != IGNORE
    probs, flat = probs[valid], flat[valid]
    inter = torch.zeros(n_classes, dtype=probs.dtype).index_add(0, flat, probs.gather(1, flat[:, None])[:, 0])
    count = torch.bincount(flat, minlength=n_classes).to(probs.dtype)
    dice = (2 * inter + 1e-5) / (probs.sum(0) + count + 1e-5)
    return 1.0 - dice[count > 0].mean()


def loss_fn(logits: torch.Tensor, structures: torch.Tensor, tissues: torch.Tensor) -> torch.Tensor:
    """Cross-entropy + soft Dice on both heads (structures weighted 1, tissues 0.5)."""
    s_logits, t_logits = split_heads(logits)
    s = F.cross_entropy(s_logits, structures, ignore_index=IGNORE) + _dice_loss(s_logits, structures)
    t = F.cross_entropy(t_logits, tissues, ignore_index=IGNORE) + _dice_loss(t_logits, tissues)
    return s + 0.5 * t


def dice_scores(predicted: np.ndarray, truth: np.ndarray, labels: tuple[int, ...]) -> dict[int, float]:
    """Dice per label id (NaN when absent from both)."""
    out = {}
    for label in labels:
        a, b = predicted == label, truth == label
        total = int(a.sum() + b.sum())
        out[label] = float(2 * np.logical_and(a, b).sum() / total) if total else float("nan")
    return out


def validate(net: DualTaskNet, cases: list[TrainingCase]) -> dict[str, float]:
    """Box-space Dice on the validation cases' real images: 15 subcortical mean, tissue GM and WM."""
    if not cases:
        return {}
    still = AugmentConfig(crop=(104, 128, 104), real_fraction=1.0, max_rotation_deg=0.0, max_scaling=0.0,
                          max_translation_mm=0.0, max_displacement_mm=0.0, max_bias=0.0, max_noise=0.0,
                          gamma_sd=0.0)  # fmt: skip
    ids = np.asarray(STRUCTURES)
    sub, gm, wm = [], [], []
    for case in cases:
        x, structures, tissues = DeepSampler([case], config=still, seed=0).sample()
        probs = predict_box(net, x)
        s_pred = ids[probs[: len(ids)].argmax(0).numpy()]
        t_pred = probs[len(ids):].argmax(0).numpy()
        truth = np.where(structures.numpy() == IGNORE, 0, ids[np.minimum(structures.numpy(), len(ids) - 1)])
        sub.append(np.nanmean(list(dice_scores(s_pred, truth, SUBCORTICAL).values())))
        t_dice = dice_scores(t_pred, tissues.numpy(), (2, 3))
        gm.append(t_dice[2])
        wm.append(t_dice[3])
    net.train()
    return {"subcortical": float(np.mean(sub)), "gm": float(np.mean(gm)), "wm": float(np.mean(wm))}


# ----------------------------------------------------------------------------------------------------------------------
# the loop


def _atomic_save(obj: Any, path: Path) -> None:
    tmp = path.with_name(path.name + ".tmp")
    torch.save(obj, tmp)
    tmp.replace(path)


def _lr(base: float, progress: float) -> float:
    """Short linear warm-up, then cosine decay to 5 % over the budget."""
    if progress < 0.02:
        return base * (0.1 + 0.9 * progress / 0.02)
    return base * (0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * min(progress, 1.0))))


def _run_config(args: argparse.Namespace, config: UNetConfig, augment: AugmentConfig,
                cases: list[TrainingCase], validation: list[TrainingCase]) -> dict[str, Any]:  # fmt: skip
    return {
        "architecture": config.as_dict(), "augment": augment.as_dict(),
        "training_cases": [c.name for c in cases], "validation_cases": [c.name for c in validation],
        "holdout": list(filter(None, args.holdout.split(","))), "seed": args.seed, "lr": args.lr,
        "minutes": args.minutes if math.isfinite(args.minutes) else None, "max_steps": args.max_steps,
        "command": "mriquant train " + " ".join(getattr(args, "argv", None) or sys.argv[1:]),
        "torch": torch.__version__, "threads": torch.get_num_threads(), "licence": args.licence,
        "init": args.init,
    }  # fmt: skip


def train(args: argparse.Namespace) -> dict[str, Any]:
    """Run the training loop; returns the final state summary (steps, best validation)."""
    torch.manual_seed(args.seed)
    np.random.seed(args.seed)
    if args.threads:
        torch.set_num_threads(args.threads)
    all_cases = load_cases(args)
    val_names = set(filter(None, args.validation.split(",")))
    validation = [c for c in all_cases if c.name in val_names and c.image is not None]
    cases = [c for c in all_cases if c.name not in val_names]
    if not cases:
        raise InputError(f"Expected training cases besides the validation ones, found none in {args.data}.")
    config, augment = default_config(), AugmentConfig(real_fraction=args.real_fraction,
                                                     paired_share=args.paired_share)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    net = build_network(config).to(device)
    if args.init is not None:
        _initialise(net, args.init)
    opt = torch.optim.AdamW(net.parameters(), lr=args.lr, weight_decay=1e-5)
    sampler = DeepSampler(cases, config=augment, seed=args.seed)
    state: dict[str, Any] = {"step": 0, "seconds": 0.0, "best": -1.0, "best_step": 0}
    checkpoint = args.output / "checkpoint.pt"
    if args.resume and checkpoint.exists():
        saved = torch.load(checkpoint, map_location=device, weights_only=False)
        net.load_state_dict(saved["net"])
        opt.load_state_dict(saved["opt"])
        sampler.gen.set_state(saved["sampler"])
        state = saved["state"]
        _log(f"resumed at step {state['step']}")
    run_config = _run_config(args, config, augment, cases, validation)
    (args.output / "config.json").write_text(json.dumps(run_config, indent=1))
    budget = args.minutes * 60.0
    started = time.perf_counter() - state["seconds"]
    log = open(args.output / "log.jsonl", "a")  # noqa: SIM115 (kept open for the loop)
    running = None
    try:
        if args.init is not None and state["step"] == 0:  # the starting weights are the first candidate
            _checkpoint(args, net, opt, sampler, state, validation, running, log)
        while True:
            elapsed = time.perf_counter() - started
            if elapsed >= budget or (args.max_steps and state["step"] >= args.max_steps):
                break
            for group in opt.param_groups:
                group["lr"] = _lr(args.lr, elapsed / budget)
            x, structures, tissues = sampler.sample()
            logits = net(x[None].to(device))
            loss = loss_fn(logits, structures[None].to(device), tissues[None].to(device))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            state["step"] += 1
            value = loss.item()
            running = value if running is None else 0.98 * running + 0.02 * value
            if state["step"] % 25 == 0:
                _log(f"step {state['step']} loss {running:.4f} ({elapsed / state['step']:.2f} s/step)")
            if state["step"] % args.validate_every == 0:
                state["seconds"] = time.perf_counter() - started
                _checkpoint(args, net, opt, sampler, state, validation, running, log)
        if state["step"] % args.validate_every:
            state["seconds"] = time.perf_counter() - started
            _checkpoint(args, net, opt, sampler, state, validation, running, log)
    finally:
        log.close()
    if args.export is not None:
        export(args.output, args.export, licence=args.licence)
    return state


def _initialise(net: DualTaskNet, weights: str) -> None:
    """Load ``weights`` (as ``segment --weights`` takes them; checked against their manifest) into ``net``.

    Training on two CPU cores is slow; starting from the bundled weights lets runs add up across sessions.
    """
    from mriquant.segment.deep import load_network

    trained, description = load_network(weights)
    if trained.config != net.config:
        raise InputError(f"Expected --init weights of the architecture {net.config.as_dict()}, found "
                         f"{trained.config.as_dict()}; train from scratch instead.")  # fmt: skip
    net.load_state_dict(trained.state_dict())
    _log(f"initialised from {description.get('file')} (sha256 {str(description.get('sha256'))[:12]})")


def _checkpoint(args: argparse.Namespace, net: DualTaskNet, opt: torch.optim.Optimizer, sampler: DeepSampler,
                state: dict[str, Any], validation: list[TrainingCase], running: float | None,
                log: Any) -> None:  # fmt: skip
    scores = validate(net, validation)
    score = scores.get("subcortical", -float(running or 0.0))
    if score > state["best"]:
        state["best"], state["best_step"] = score, state["step"]
        _atomic_save({k: v.detach().cpu() for k, v in net.state_dict().items()}, args.output / "best.pt")
    _atomic_save({"net": net.state_dict(), "opt": opt.state_dict(), "sampler": sampler.gen.get_state(),
                  "state": state}, args.output / "checkpoint.pt")  # fmt: skip
    record = {"step": state["step"], "seconds": round(state["seconds"], 1), "loss": running, **scores}
    log.write(json.dumps(record) + "\n")
    log.flush()
    _log(f"checkpoint step {state['step']}: {scores} (best {state['best']:.4f} at {state['best_step']})")


def export(run: Path, folder: Path, name: str = "deep", version: str = "1", licence: str | None = None,
           command: str | None = None) -> Path:  # fmt: skip
    """Copy ``run/best.pt`` to ``folder`` as ``deep_unet.pt`` and add its manifest entry (SHA-256, config).

    ``licence`` (default: the run's ``--licence``) states the terms the training data puts on the weights;
    ``command`` (default: the run's recorded command) is how to reproduce them.
    """
    from mriquant.models import file_sha256

    run_config = json.loads((run / "config.json").read_text())
    state = torch.load(run / "best.pt", map_location="cpu", weights_only=True)
    folder.mkdir(parents=True, exist_ok=True)
    weights = folder / "deep_unet.pt"
    _atomic_save(state, weights)
    log = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines() if line.strip()]
    best = max((r for r in log if "subcortical" in r), key=lambda r: r["subcortical"], default=log[-1] if log else {})
    manifest_path = folder / "manifest.json"
    manifest: dict[str, Any] = (
        json.loads(manifest_path.read_text()) if manifest_path.exists() else {"format": 1, "models": {}}
    )
    manifest["models"][name] = {
        "file": weights.name, "sha256": file_sha256(weights), "size_bytes": weights.stat().st_size,
        "config": run_config["architecture"], "augment": run_config["augment"], "version": version,
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "training_command": command or run_config["command"], "training_steps": best.get("step"),
        "training_minutes": round(float(best.get("seconds", 0.0)) / 60.0, 1),
        "validation": {k: best.get(k) for k in ("subcortical", "gm", "wm")},
        "training_data": run_config["training_cases"], "validation_data": run_config["validation_cases"],
        "held_out": run_config["holdout"], "licence": licence or run_config.get("licence", ""),
        "initialised_from": run_config.get("init"),
        "prior": dict(PRIOR_ENTRY),
    }  # fmt: skip
    tmp = manifest_path.with_name("manifest.json.tmp")
    tmp.write_text(json.dumps(manifest, indent=2) + "\n")
    tmp.replace(manifest_path)
    return weights


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``mriquant train`` (and ``python -m mriquant.training.deep``)."""
    return command(parse_args(argv))


def command(args: argparse.Namespace) -> int:
    """Resolve the options and train; 2 with a one-line message on bad input."""
    try:
        args = resolve(args)
        os.environ.setdefault("ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS", str(args.threads or 2))
        state = train(args)
    except MriquantError as exc:
        print(str(exc), file=sys.stderr)
        return 2
    _log(f"done: {state['step']} steps, best validation {state['best']:.4f} at step {state['best_step']}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

