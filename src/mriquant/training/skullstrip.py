"""Train the skull-stripping U-Net on synthetic heads (on the fly) and export the bundled weights.

Usage::

    python -m mriquant.training.skullstrip --out /tmp/skullstrip/run --minutes 75 --seed 1 [--resume]

Data (``--data``, default ``<repo>/../shared/data``), split by anatomy:

- training label maps: SynthSeg ``training_seg_01..18`` and BrainWeb crisp subjects 18, 20, 38, 41, 42, 43;
- validation: SynthSeg ``training_seg_19, 20`` (4 fixed synthetic samples, Dice on the 2 mm grid) and
  BrainWeb subject 44 simulated as T1, T2 and PD (3 % noise, 20 % bias; Dice at 1 mm after the full
  inference path of :mod:`mriquant.preprocess.skullstrip`);
- never read here: BrainWeb subjects 04, 05, 06 (kept for ``bench/preprocess.py``).

Loss: soft Dice + binary cross-entropy against the soft (partial-volume) brain target. Adam, learning
rate on a cosine schedule over the time budget. Checkpoints (model, optimiser, random states, elapsed
time) go to ``OUT/last.pt`` every ``--checkpoint-minutes``; the best validation model is exported to
``mriquant/models/weights/`` (float16 state dict + config + manifest) every ``--export-minutes`` and at
the end, so an interrupted run still leaves usable weights.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F  # noqa: N812

from mriquant.models import WEIGHTS_DIR, file_sha256
from mriquant.models.unet import UNet3D, UNetConfig
from mriquant.training.synth import LabelMap, SynthConfig, SynthGenerator, load_label_maps

TRAIN_SYNTHSEG = [f"training_seg_{i:02d}.nii.gz" for i in range(1, 19)]
VAL_SYNTHSEG = ["training_seg_19.nii.gz", "training_seg_20.nii.gz"]
TRAIN_BRAINWEB = [f"subject{i:02d}_crisp_v.mnc.gz" for i in (18, 20, 38, 41, 42, 43)]
VAL_BRAINWEB = "subject44_crisp_v.mnc.gz"
HELD_OUT_BRAINWEB = [f"subject{i:02d}_crisp_v.mnc.gz" for i in (4, 5, 6)]
WEIGHTS_FILE = "skullstrip_unet.pt"
CONFIG_FILE = "skullstrip_unet.json"
MODEL_VERSION = "1"


def _log(message: str) -> None:
    print(f"[{datetime.now().strftime('%H:%M:%S')}] {message}", flush=True)  # the CLI's progress output


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line options."""
    default_data = Path(__file__).resolve().parents[4] / "shared" / "data"
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", required=True, type=Path, help="checkpoint folder")
    p.add_argument("--minutes", type=float, default=60.0, help="training time budget (wall clock, all sessions)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--resume", action="store_true", help="continue from OUT/last.pt")
    p.add_argument("--init-from-bundled", action="store_true", help="start from the bundled weights (same channels)")
    p.add_argument("--data", type=Path, default=default_data)
    p.add_argument("--cache", type=Path, default=Path("/tmp/skullstrip/maps"), help="prepared label-map cache")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--channels", type=int, nargs="+", default=[8, 32, 64, 128], help="feature maps per level")
    p.add_argument("--patch", type=int, nargs=3, default=[80, 96, 80], help="training patch (voxels at 2 mm)")
    p.add_argument("--translation", type=float, default=25.0, help="largest patch offset from the brain centre (mm)")
    p.add_argument("--no-bf16", action="store_true", help="train in float32 (default: bfloat16 autocast)")
    p.add_argument("--checkpoint-minutes", type=float, default=4.0)
    p.add_argument("--validate-minutes", type=float, default=8.0)
    p.add_argument("--export-minutes", type=float, default=15.0)
    p.add_argument("--weights-dir", type=Path, default=WEIGHTS_DIR)
    p.add_argument("--calibrate", action="store_true", help="only pick the threshold of the exported weights")
    return p.parse_args(argv)


def loss_fn(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Soft Dice loss + binary cross-entropy (float32), target in [0, 1]."""
    logits = logits.float()
    prob = torch.sigmoid(logits)
    dice = 2 * (prob * target).sum() / (prob.sum() + target.sum() + 1e-6)
    return (1 - dice) + F.binary_cross_entropy_with_logits(logits, target)


def dice(a: np.ndarray[Any, Any], b: np.ndarray[Any, Any]) -> float:
    """Dice of two boolean arrays (1.0 when both are empty)."""
    total = int(a.sum()) + int(b.sum())
    return 1.0 if total == 0 else 2.0 * int(np.logical_and(a, b).sum()) / total


@dataclass
class Validator:
    """Fixed validation inputs: synthetic samples and simulated BrainWeb scans of held-out anatomies."""

    synth: list[tuple[torch.Tensor, torch.Tensor]]
    scans: list[tuple[str, Any, np.ndarray[Any, Any]]] = field(default_factory=list)

    @classmethod
    def build(cls, data: Path, cache: Path, shape: tuple[int, int, int]) -> Validator:
        """Draw the synthetic samples (fixed seed) and simulate the BrainWeb validation scans."""
        from mriquant.io import read_labels
        from mriquant.simulate.brainweb import simulate

        maps = load_label_maps([data / "synthseg-label-maps" / n for n in VAL_SYNTHSEG], cache_dir=cache)
        gen = SynthGenerator(maps, SynthConfig(shape=shape), seed=12345)
        synth = [gen.sample(i % len(maps)) for i in range(4)]
        labels = read_labels(data / "brainweb-crisp" / VAL_BRAINWEB)
        scans = []
        for i, contrast in enumerate(("T1", "T2", "PD")):
            sim = simulate(labels, contrast=contrast, noise=0.03, bias=0.2, seed=100 + i)
            scans.append((contrast, sim.image, sim.brain_mask.array > 0))
        return cls(synth, scans)

    def run(self, net: UNet3D) -> dict[str, float]:
        """Dice per validation input and their means (``synth``, ``brainweb``, ``score``)."""
        from mriquant.preprocess.skullstrip import postprocess, predict_probability

        net.eval()
        out: dict[str, float] = {}
        with torch.inference_mode():
            synth = [dice(torch.sigmoid(net(x[None]))[0].numpy() > 0.5, y.numpy() > 0.5) for x, y in self.synth]
            for contrast, image, truth in self.scans:
                prob, _, _ = predict_probability(net, image)
                out[f"bw_{contrast}"] = dice(postprocess(prob.array), truth)
        net.train()
        out["synth"] = float(np.mean(synth))
        out["brainweb"] = float(np.mean([v for k, v in out.items() if k.startswith("bw_")]))
        out["score"] = 0.5 * out["synth"] + 0.5 * out["brainweb"]
        return out


@dataclass
class State:
    """Everything a checkpoint restores."""

    step: int = 0
    elapsed: float = 0.0
    best_score: float = -1.0
    best_state: dict[str, torch.Tensor] | None = None
    best_val: dict[str, float] = field(default_factory=dict)
    history: list[dict[str, Any]] = field(default_factory=list)


def _atomic_save(obj: Any, path: Path) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)


def save_checkpoint(path: Path, net: UNet3D, opt: torch.optim.Optimizer, gen: SynthGenerator, st: State) -> None:
    """Write ``path`` (model, optimiser, generator random states, progress)."""
    _atomic_save({"model": net.state_dict(), "opt": opt.state_dict(), "rng": gen.rng.bit_generator.state,
                  "gen": gen.gen.get_state(), "torch": torch.get_rng_state(), "state": st.__dict__}, path)  # fmt: skip


def load_checkpoint(path: Path, net: UNet3D, opt: torch.optim.Optimizer, gen: SynthGenerator) -> State:
    """Restore what :func:`save_checkpoint` wrote."""
    ck = torch.load(path, map_location="cpu", weights_only=False)  # our own checkpoint, not shipped
    net.load_state_dict(ck["model"])
    opt.load_state_dict(ck["opt"])
    gen.rng.bit_generator.state = ck["rng"]
    gen.gen.set_state(ck["gen"])
    torch.set_rng_state(ck["torch"])
    return State(**ck["state"])


def export_weights(st: State, config: UNetConfig, args: argparse.Namespace, synth: SynthConfig) -> Path | None:
    """Write the best weights (float16), config and manifest into ``args.weights_dir``."""
    if st.best_state is None:
        return None
    folder = Path(args.weights_dir)
    folder.mkdir(parents=True, exist_ok=True)
    weights = folder / WEIGHTS_FILE
    _atomic_save({k: v.half() if v.is_floating_point() else v for k, v in st.best_state.items()}, weights)
    cfg = {**config.as_dict(), "threshold": 0.5, "synth": synth.__dict__}
    (folder / CONFIG_FILE).write_text(json.dumps(cfg, indent=2) + "\n")
    entry = {
        "file": WEIGHTS_FILE,
        "sha256": file_sha256(weights),
        "size_bytes": weights.stat().st_size,
        "config_file": CONFIG_FILE,
        "config": config.as_dict(),
        "version": MODEL_VERSION,
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "training_command": "python -m mriquant.training.skullstrip " + " ".join(sys.argv[1:]),
        "training_steps": st.step,
        "training_minutes": round(st.elapsed / 60, 1),
        "training_data": {
            "synthseg-label-maps (Apache-2.0)": TRAIN_SYNTHSEG,
            "brainweb-crisp (BrainWeb, Aubert-Broche 2006)": TRAIN_BRAINWEB,
            "validation": [*VAL_SYNTHSEG, VAL_BRAINWEB],
            "never used (benchmark)": HELD_OUT_BRAINWEB,
        },
        "validation_dice": {k: round(v, 4) for k, v in st.best_val.items()},
    }
    manifest = {"format": 1, "models": {"skullstrip": entry}}
    tmp = folder / "manifest.json.tmp"
    tmp.write_text(json.dumps(manifest, indent=2) + "\n")
    os.replace(tmp, folder / "manifest.json")
    return weights


def _lr(base: float, elapsed: float, budget: float) -> float:
    frac = min(1.0, elapsed / max(budget, 1.0))
    warm = min(1.0, 0.2 + elapsed / 120.0)  # short warm-up over the first two minutes
    return base * warm * (0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * frac)))


def _validate(val: Validator, net: UNet3D, st: State) -> None:
    t0 = time.perf_counter()
    res = val.run(net)
    st.history.append({"step": st.step, "elapsed_min": round(st.elapsed / 60, 2), **res})
    if res["score"] > st.best_score:
        st.best_score, st.best_val = res["score"], res
        st.best_state = {k: v.detach().clone() for k, v in net.state_dict().items()}
    parts = " ".join(f"{k}={v:.4f}" for k, v in res.items())
    _log(f"validation step {st.step}: {parts} (best score {st.best_score:.4f}, {time.perf_counter() - t0:.0f} s)")


def _train_step(net: UNet3D, opt: torch.optim.Optimizer, gen: SynthGenerator, bf16: bool) -> float:
    x, y = gen.sample()
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        logits = net(x[None])
    loss = loss_fn(logits, y[None])
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
    return float(loss.detach())


def train(args: argparse.Namespace) -> State:
    """Run (or resume) training within the time budget; returns the final state."""
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    args.out.mkdir(parents=True, exist_ok=True)
    patch = (int(args.patch[0]), int(args.patch[1]), int(args.patch[2]))
    synth_cfg = SynthConfig(shape=patch, translation_mm=args.translation)
    config = UNetConfig(channels=tuple(args.channels), spacing_mm=synth_cfg.spacing)
    paths = [args.data / "synthseg-label-maps" / n for n in TRAIN_SYNTHSEG]
    paths += [args.data / "brainweb-crisp" / n for n in TRAIN_BRAINWEB]
    maps: list[LabelMap] = load_label_maps(paths, cache_dir=args.cache)
    gen = SynthGenerator(maps, synth_cfg, seed=args.seed)
    net = UNet3D(config)
    opt = torch.optim.Adam(net.parameters(), lr=args.lr)
    ckpt = args.out / "last.pt"
    if args.init_from_bundled:
        from mriquant.models import load_weights

        net.load_state_dict({k: v.float() for k, v in load_weights("skullstrip", folder=args.weights_dir)[0].items()})
    st = load_checkpoint(ckpt, net, opt, gen) if args.resume and ckpt.exists() else State()
    _log(f"{len(maps)} maps, {sum(p.numel() for p in net.parameters())} parameters, step {st.step}, "
         f"{st.elapsed / 60:.1f} of {args.minutes} min used")  # fmt: skip
    val = Validator.build(args.data, args.cache, synth_cfg.shape)
    budget = args.minutes * 60
    start, last = time.perf_counter() - st.elapsed, {"ck": st.elapsed, "val": st.elapsed, "exp": st.elapsed}
    losses: list[float] = []
    while st.elapsed < budget:
        for group in opt.param_groups:
            group["lr"] = _lr(args.lr, st.elapsed, budget)
        losses.append(_train_step(net, opt, gen, not args.no_bf16))
        st.step += 1
        st.elapsed = time.perf_counter() - start
        if st.step % 20 == 0:
            _log(f"step {st.step} loss {np.mean(losses[-20:]):.4f} lr {opt.param_groups[0]['lr']:.2e} "
                 f"{st.elapsed / 60:.1f} min")  # fmt: skip
        if st.elapsed - last["val"] > args.validate_minutes * 60:
            _validate(val, net, st)
            last["val"] = st.elapsed
        if st.elapsed - last["ck"] > args.checkpoint_minutes * 60:
            save_checkpoint(ckpt, net, opt, gen, st)
            last["ck"] = st.elapsed
        if st.elapsed - last["exp"] > args.export_minutes * 60:
            _log(f"exported {export_weights(st, config, args, synth_cfg)}")
            last["exp"] = st.elapsed
    _validate(val, net, st)
    save_checkpoint(ckpt, net, opt, gen, st)
    _log(f"exported {export_weights(st, config, args, synth_cfg)}; best {st.best_val}")
    return st


def calibrate(args: argparse.Namespace) -> float:
    """Pick the probability threshold of the exported model that maximises validation Dice.

    Uses only the validation anatomy (BrainWeb subject 44, T1/T2/PD); thresholds 0.30-0.98 in steps of
    0.02. The manifest entry gets ``threshold`` and ``threshold_dice``; the weights file is unchanged.
    """
    from mriquant.preprocess.skullstrip import load_model, postprocess, predict_probability

    torch.set_num_threads(args.threads)
    load_model.cache_clear()
    net, _ = load_model(str(args.weights_dir))
    val = Validator.build(args.data, args.cache, (32, 32, 32))
    probs = [(predict_probability(net, image)[0].array, truth) for _, image, truth in val.scans]
    candidates = np.round(np.arange(0.30, 0.981, 0.02), 2)
    scores = [float(np.mean([dice(postprocess(p, float(t)), truth) for p, truth in probs])) for t in candidates]
    best = int(np.argmax(scores))
    _log("threshold calibration: " + " ".join(f"{t:.2f}:{v:.4f}" for t, v in zip(candidates, scores, strict=True)))
    path = Path(args.weights_dir) / "manifest.json"
    manifest = json.loads(path.read_text())
    entry = manifest["models"]["skullstrip"]
    entry.update(threshold=float(candidates[best]), threshold_dice=round(scores[best], 4),
                 threshold_command="python -m mriquant.training.skullstrip " + " ".join(sys.argv[1:]))  # fmt: skip
    path.write_text(json.dumps(manifest, indent=2) + "\n")
    config_path = Path(args.weights_dir) / CONFIG_FILE
    config = json.loads(config_path.read_text())
    config["threshold"] = float(candidates[best])
    config_path.write_text(json.dumps(config, indent=2) + "\n")
    return float(candidates[best])


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``python -m mriquant.training.skullstrip``."""
    args = parse_args(argv)
    if args.calibrate:
        calibrate(args)
    else:
        train(args)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
