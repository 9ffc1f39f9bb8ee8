"""Engine step overhead: ``Engine._train_epoch`` vs a hand-written PyTorch loop.

    python benchmarks/engine_overhead.py [--image-size 64] [--steps 40] [--repeats 7]
    python benchmarks/engine_overhead.py --config configs/resnet_scratch.yaml --image-size 128 --batch-size 32
    python benchmarks/engine_overhead.py --config configs/resnet_scratch.yaml --image-size 128 --batch-size 32 \\
        --regularisers

With ``--regularisers`` the recipe's CutMix/MixUp, label smoothing and EMA stay on, and the bare loop
does the same with torchvision's ``v2.MixUp``/``v2.CutMix``, ``cross_entropy`` on soft targets and
``torch.optim.swa_utils.AveragedModel`` (an EMA update after each step); without it both sides train
with plain cross-entropy (the recipe's regularisers off), which isolates the engine's own cost.

Both sides train the same model architecture (same initial weights) with the same optimizer
on the same DataLoader (the engine's train loader over the decoded-image cache, num_workers=0),
the same number of steps and the same batch order (EpochSampler.set_epoch), in one process with
the same torch thread count; runs alternate engine/bare, one warm-up run each is discarded.
"""

from __future__ import annotations

import argparse
import copy

import torch

from _common import DATA_ROOT, ratio, scratch_dir, summary, timed, write_result

from brainmri.config import load_config
from brainmri.train.engine import Engine
from brainmri.train.phases import prepare_phase


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", default="configs/baseline_cnn.yaml")
    p.add_argument("--regularisers", action="store_true",
                   help="keep the recipe's mixing, smoothing and EMA on both sides")
    p.add_argument("--data-root", default=str(DATA_ROOT))
    p.add_argument("--image-size", type=int, default=64)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--steps", type=int, default=40)
    p.add_argument("--repeats", type=int, default=7)
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args()
    torch.set_num_threads(args.threads)

    run_dir = scratch_dir("engine_overhead-")
    off = [] if args.regularisers else ["train.mixup=0", "train.cutmix=0", "train.label_smoothing=0", "train.ema=null"]
    cfg = load_config(args.config, [*off, 
        f"data.root={args.data_root}", f"data.input_size={args.image_size}", f"data.batch_size={args.batch_size}",
        "data.cache=decoded", "data.num_workers=0", "train.mixed_precision=no", "wandb.enabled=false",
        f"train.max_steps_per_epoch={args.steps}", f"run_dir={run_dir}"])
    eng = Engine(cfg)
    eng.run.create()
    parts = eng.build()
    bare_model = copy.deepcopy(parts.model)  # same initial weights
    ph = prepare_phase(parts.model, parts.data, cfg.phases[0], cfg, eng.acc)

    opt_cls = {"adam": torch.optim.Adam, "adamw": torch.optim.AdamW}[cfg.optim.name]
    bare_opt = opt_cls(bare_model.parameters(), lr=cfg.optim.lr, weight_decay=cfg.optim.weight_decay)
    tc = cfg.train
    mix = ema = None
    if args.regularisers:
        from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn
        from torchvision.transforms import v2

        classes = len(parts.classes)
        mix = v2.RandomChoice([v2.MixUp(alpha=tc.mixup, num_classes=classes),
                               v2.CutMix(alpha=tc.cutmix, num_classes=classes)],
                              p=[1 - tc.mixup_switch_prob, tc.mixup_switch_prob])
        ema = AveragedModel(bare_model, multi_avg_fn=get_ema_multi_avg_fn(tc.ema))
    loader = parts.data.loaders["train"]  # the same DataLoader object the engine's prepared loader wraps

    def bare_epoch() -> None:
        bare_model.train()
        for i, (x, y, _) in enumerate(loader):
            if i >= args.steps:  # same stopping rule as the engine's max_steps_per_epoch
                break
            inputs, target = parts.data.normalize(x), y
            if mix is not None and torch.rand(()) < tc.mixup_prob:
                inputs, target = mix(inputs, y)
            loss = torch.nn.functional.cross_entropy(bare_model(inputs).float(), target,
                                                     label_smoothing=tc.label_smoothing)
            loss.backward()
            bare_opt.step()
            bare_opt.zero_grad(set_to_none=True)
            if ema is not None:
                ema.update_parameters(bare_model)

    def engine_epoch() -> None:
        eng._train_epoch(parts, ph, 1, None)

    times = {"engine": [], "bare": []}
    for rep in range(args.repeats + 1):
        for name, fn in ((("engine", engine_epoch), ("bare", bare_epoch)) if rep % 2
                         else (("bare", bare_epoch), ("engine", engine_epoch))):
            parts.data.sampler.set_epoch(rep)
            t = timed(fn)
            if rep > 0:  # rep == 0 is the warm-up
                times[name].append(t)
        print(f"repeat {rep}: engine {times['engine'][-1:]} bare {times['bare'][-1:]} (wall, cpu)", flush=True)

    eng_s, bare_s = summary(times["engine"]), summary(times["bare"])
    r = ratio(eng_s, bare_s)
    images = args.steps * args.batch_size
    name = "engine_overhead" + ("" if args.config.endswith("baseline_cnn.yaml") else f"_{cfg.recipe}") + (
        "_regularised" if args.regularisers else "")
    write_result(name, {
        "setup": {"config": args.config, "model": cfg.model.arch, "image_size": args.image_size,
                  "batch_size": args.batch_size, "steps": args.steps, "repeats": args.repeats, "threads": args.threads,
                  "data": "decoded cache", "crop": cfg.data.crop, "background": cfg.data.background,
                  "augment": list(cfg.data.augment), "num_workers": 0, "optimizer": cfg.optim.name,
                  "mixed_precision": "no", "regularisers": args.regularisers},
        "engine": eng_s, "bare": bare_s, "ratio_engine_over_bare": r,
        "engine_images_per_s": images / eng_s["median_s"], "bare_images_per_s": images / bare_s["median_s"],
        "target": "<= 1.05", "meets_target": {k: v <= 1.05 for k, v in r.items()}})
    print(f"engine {eng_s['median_s']:.3f}s (cpu {eng_s['cpu_median_s']:.3f}s)  bare {bare_s['median_s']:.3f}s "
          f"(cpu {bare_s['cpu_median_s']:.3f}s)  ratio {r}")


if __name__ == "__main__":
    main()
