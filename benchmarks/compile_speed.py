"""Training throughput with ``train.channels_last`` and ``train.compile``: eager, channels_last,
compile, both, for the baseline CNN and ResNet-10t (``resnet_scratch``) at 128 px.

    python benchmarks/compile_speed.py [--steps 14] [--warmup 2] [--batch-size 8]
    python benchmarks/compile_speed.py --configs configs/resnet_scratch.yaml --steps 40

Each variant trains the recipe's model (``brainmri.models.registry.build_model``, same initial weights)
with the recipe's optimizer and plain cross-entropy on the same batches of phantom images at 128 px
(``brainmri.data.phantoms``), through the engine's own training forward
(``brainmri.train.accel.TrainingForward``, ``to_channels_last``), in one process with the same
torch thread count, interleaved step by step (step i of every variant before step i + 1 of any, each
with its own random stream), so the load of a shared machine falls on all of them alike. The first
``--warmup`` steps (where compiling happens) are timed apart; images/s is over the steps after them.
Result check: each variant's loss curve against eager's, beside the distance between two eager runs
from different initial weights (a seed's noise).
"""

from __future__ import annotations

import argparse
import copy
import time

import numpy as np
import torch
from PIL import Image

from _common import scratch_dir, write_result

from brainmri.config import load_config
from brainmri.models.registry import build_model
from brainmri.train.accel import TrainingForward, to_channels_last
from brainmri.train.phases import phase_optimization

VARIANTS = {"eager": (False, False), "channels_last": (True, False), "compile": (False, True), "both": (True, True)}


def phantom_batches(n_batches: int, batch_size: int, size: int,
                    channels: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    from brainmri.data.phantoms import generate_phantoms

    root = generate_phantoms(f"{scratch_dir('compile-speed-')}/data", n_per_class=max(8, n_batches * batch_size // 4),
                             n_test_per_class=1, image_size=size, seed=0)
    files = sorted(p for p in (root / "Training").rglob("*") if p.suffix.lower() in (".jpg", ".png"))
    classes = sorted({p.parent.name for p in files})
    images = np.stack([np.asarray(Image.open(p).convert("L" if channels == 1 else "RGB").resize((size, size)))
                       for p in files]).astype(np.float32) / 255.0
    x = torch.from_numpy(images)
    x = x[:, None] if channels == 1 else x.permute(0, 3, 1, 2)
    x = (x - 0.45) / 0.225
    y = torch.tensor([classes.index(p.parent.name) for p in files])
    order = torch.randperm(len(files), generator=torch.Generator().manual_seed(0))
    batches = []
    for b in range(n_batches):
        idx = order[(b * batch_size + torch.arange(batch_size)) % len(files)]
        batches.append((x[idx].contiguous(), y[idx]))
    return batches


class Trainer:
    """One variant: its copy of the model, optimizer and training forward; one step at a time."""

    def __init__(self, cfg, model: torch.nn.Module, channels_last: bool, compile: bool):
        self.model = copy.deepcopy(model)
        if channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)
        self.model.train()
        self.channels_last = channels_last
        self.optimizer, _ = phase_optimization(self.model, cfg.phases[0], cfg)
        self.forward = TrainingForward(self.model, compile)
        self.losses: list[float] = []
        self.seconds: list[float] = []
        self.rng = torch.get_rng_state()  # its own random stream (dropout), as if it trained alone

    def step(self, x: torch.Tensor, y: torch.Tensor) -> None:
        torch.set_rng_state(self.rng)
        start = time.perf_counter()
        inputs = to_channels_last(x) if self.channels_last else x
        loss = torch.nn.functional.cross_entropy(self.forward(inputs).float(), y)
        loss.backward()
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.losses.append(float(loss.detach()))
        self.seconds.append(time.perf_counter() - start)
        self.rng = torch.get_rng_state()


def run_variants(cfg, model, batches, names: list[str], warmup: int) -> dict[str, Trainer]:
    """Every variant trains the same batches; step i of every variant runs before step i + 1 of any,
    so a change in the machine's load falls on all of them alike."""
    trainers = {}
    for name in names:
        torch.manual_seed(0)
        trainers[name] = Trainer(cfg, model, *VARIANTS[name])
    for x, y in batches:
        for trainer in trainers.values():
            trainer.step(x, y)
    return trainers


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--configs", nargs="+", default=["configs/baseline_cnn.yaml", "configs/resnet_scratch.yaml"])
    parser.add_argument("--image-size", type=int, default=128)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--steps", type=int, default=14, help="steps per variant, warm-up included")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    args = parser.parse_args()

    out: dict = {"image_size": args.image_size, "batch_size": args.batch_size, "steps": args.steps,
                 "warmup": args.warmup, "recipes": {}}
    for path in args.configs:
        cfg = load_config(path, [f"data.input_size={args.image_size}", "train.mixup=0", "train.cutmix=0"])
        channels = cfg.data.input_channels
        batches = phantom_batches(args.steps, args.batch_size, args.image_size, channels)
        torch.manual_seed(0)
        model = build_model(cfg.model, 4, channels, args.image_size)
        torch.manual_seed(1)
        other_init = build_model(cfg.model, 4, channels, args.image_size)
        trainers = run_variants(cfg, model, batches, ["eager", *(v for v in args.variants if v != "eager")],
                                args.warmup)
        torch.manual_seed(0)
        other = Trainer(cfg, other_init, False, False)
        for x, y in batches:
            other.step(x, y)
        seed_noise = other.losses
        eager = np.array(trainers["eager"].losses)
        noise = float(np.mean(np.abs(np.array(seed_noise) - eager)))
        rows = {}
        for name, t in trainers.items():
            timed = t.seconds[args.warmup:]
            rows[name] = {"warmup_s": sum(t.seconds[:args.warmup]), "timed_s": sum(timed),
                          "images_per_s": len(timed) * args.batch_size / sum(timed),
                          "median_step_s": float(np.median(timed)), "compiled": t.forward.compiled,
                          "losses": t.losses}
        for name, row in rows.items():
            row["ratio_to_eager"] = row["images_per_s"] / rows["eager"]["images_per_s"]
            row["median_step_ratio_to_eager"] = rows["eager"]["median_step_s"] / row["median_step_s"]
            row["loss_gap_to_eager"] = float(np.mean(np.abs(np.array(row["losses"]) - eager)))
            print(f"{cfg.recipe} {name}: {row['images_per_s']:.1f} images/s, x{row['ratio_to_eager']:.2f} of eager "
                  f"(median step x{row['median_step_ratio_to_eager']:.2f}), warm-up {row['warmup_s']:.1f} s, "
                  f"compiled {row['compiled']}, mean |loss - eager's| {row['loss_gap_to_eager']:.4f} "
                  f"(another seed: {noise:.4f})", flush=True)
        out["recipes"][cfg.recipe] = {"arch": cfg.model.arch, "variants": rows, "seed_noise_loss_gap": noise,
                                      "seed_noise_losses": seed_noise}
    write_result("compile_speed", out)


if __name__ == "__main__":
    main()
