"""Training images/s and peak memory per recipe on this machine (CPU, fp32 unless stated).

    python benchmarks/recipe_throughput.py [--image-size 224] [--steps 3]

Each recipe runs in its own process (so peak RSS is its own): the recipe's model (random init;
no ImageNet download), the recipe's first phase trainable groups, optimizer and learning rate,
``--steps`` timed training steps after one warm-up step on a fixed batch of uint8 images passed
through the recipe's training transform (the data path is excluded). ``resnet50_feature+cache``
is the head-only step on cached 2048-d features (brainmri.train.features).
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time

import torch

from _common import write_result

from brainmri.config import load_config
from brainmri.data.transforms import batch_normalizer, train_transform
from brainmri.models.registry import assign_groups, build_model, freeze_frozen_norms, set_trainable
from brainmri.optim import build_optimizer

RECIPES = ["baseline_cnn", "resnet50_feature", "resnet50_feature+cache", "resnet50_finetune", "resnet152_ranger"]


def rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def measure(name: str, image_size: int, batch_size: int, steps: int, precision: str) -> dict:
    recipe = name.split("+")[0]
    cfg = load_config(f"configs/{recipe}.yaml", [f"data.input_size={image_size}", "model.pretrained=false"])
    torch.manual_seed(0)
    rss_start = rss_mib()
    model = build_model(cfg.model, 4, cfg.data.input_channels, image_size)
    phase = cfg.phases[0]
    set_trainable(model, phase.train)
    param_groups = [{"name": g, "params": ps, "lr": cfg.optim.lr * phase.lr_mult.get(g, 1.0)}
                    for g, ps in assign_groups(model, phase.train).items()]
    opt = build_optimizer(cfg.optim, param_groups)
    transform = train_transform(cfg.data)
    raw = torch.randint(0, 256, (batch_size, cfg.data.input_channels, image_size, image_size), dtype=torch.uint8)
    x = batch_normalizer(cfg.data)(torch.stack([transform(img) for img in raw]))
    y = torch.arange(batch_size) % 4
    if name.endswith("+cache"):
        x = torch.randn(batch_size, model.fc.in_features)
        forward = model.fc
    else:
        forward = model

    def step() -> None:
        model.train()
        freeze_frozen_norms(model)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16"):
            loss = torch.nn.functional.cross_entropy(forward(x).float(), y)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    step()  # warm-up: allocates optimizer state and gradient buffers
    start = time.perf_counter()
    for _ in range(steps):
        step()
    elapsed = time.perf_counter() - start
    return {"recipe": name, "optimizer": cfg.optim.name, "trainable": list(phase.train), "precision": precision,
            "image_size": image_size, "batch_size": batch_size, "steps": steps, "step_s": elapsed / steps,
            "images_per_s": steps * batch_size / elapsed,
            "params_trainable": sum(p.numel() for p in model.parameters() if p.requires_grad),
            "params_total": sum(p.numel() for p in model.parameters()),
            "peak_rss_mib": rss_mib(), "rss_before_model_mib": rss_start}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--recipes", nargs="+", default=RECIPES)
    p.add_argument("--image-size", type=int, default=224)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--steps", type=int, default=3)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--bf16", action="store_true", help="also measure bf16 autocast for the ResNet recipes")
    p.add_argument("--one", help=argparse.SUPPRESS)
    p.add_argument("--precision", default="no", help=argparse.SUPPRESS)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    if args.one:
        print(json.dumps(measure(args.one, args.image_size, args.batch_size, args.steps, args.precision)))
        return

    rows = []
    jobs = [(r, "no") for r in args.recipes]
    if args.bf16:
        jobs += [(r, "bf16") for r in args.recipes if r.startswith("resnet") and not r.endswith("+cache")]
    for recipe, precision in jobs:
        cmd = [sys.executable, __file__, "--one", recipe, "--precision", precision, "--image-size",
               str(args.image_size), "--batch-size", str(args.batch_size), "--steps", str(args.steps),
               "--threads", str(args.threads)]
        out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
        rows.append(json.loads(out.strip().splitlines()[-1]))
        r = rows[-1]
        print(f"{recipe:24s} {precision:4s} {r['images_per_s']:8.1f} img/s  peak RSS {r['peak_rss_mib']:7.0f} MiB",
              flush=True)
    write_result("recipe_throughput", {"setup": {"image_size": args.image_size, "batch_size": args.batch_size,
                                                 "steps": args.steps, "threads": args.threads,
                                                 "data": "fixed in-memory batch (data path excluded)"},
                                       "rows": rows,
                                       "gpu": "not measured: no GPU was lent to this session"})


if __name__ == "__main__":
    main()
