"""Cost of mid-epoch checkpoints (``train.checkpoint_every_min``): baseline CNN and ResNet-50 on phantoms, CPU.

    python benchmarks/checkpoint_cost.py                       # both parts below, ~3 min on 2 cores
    python benchmarks/checkpoint_cost.py run --arch resnet50 --every 10   # one whole training run

1. One mid-epoch checkpoint, in process: gathering the position (RNG states, accumulators) and
   writing ``last.pt`` atomically (model + Adam state, fsync, rotation), median of ``--repeats``;
   the amortised cost at the default interval is that time over the interval.
2. Whole training runs at the default interval (10 min: no mid-epoch checkpoint fires in a short
   run, so this is the per-step bookkeeping: the agreed stop/due flags, status.json progress)
   against ``checkpoint_every_min=0`` (disabled), alternating A B / B A after one warm-up run,
   wall time per process and the pairwise ratio. The ``run`` sub-command is one such process, for
   timing it with any external tool (``/usr/bin/time -v``); ``--every 0.0001`` checkpoints after
   about every step.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time

from _common import ROOT, scratch_dir, write_result

ARCH = {  # whole-network training with Adam: the optimizer state is twice the weights
    "baseline_cnn": ["data.input_size=64", "data.batch_size=16"],
    "resnet50": ["model.arch=resnet50", "model.pretrained=false", "data.input_size=64", "data.batch_size=8"],
}


def overrides(arch: str, every: float, run_dir: str, data_dir: str, steps: int) -> list[str]:
    return [*ARCH[arch], f"train.checkpoint_every_min={every}", f"run_dir={run_dir}", f"data.synthetic_dir={data_dir}",
            "data.synthetic.n_per_class=16", "data.synthetic.n_test_per_class=2", "data.synthetic.render_size=64",
            "data.num_workers=0", "train.mixed_precision=no", "wandb.enabled=false", "train.epochs=1",
            f"train.max_steps_per_epoch={steps}", "data.augment=[]"]


def run_once(arch: str, every: float, data_dir: str, steps: int) -> None:
    from brainmri.config import load_config
    from brainmri.train.engine import fit

    fit(load_config("configs/baseline_cnn.yaml", overrides(arch, every, scratch_dir("ckpt-run-"), data_dir, steps)))


def write_cost(arch: str, data_dir: str, repeats: int) -> dict:
    """Median seconds of one mid-epoch checkpoint (position + atomic last.pt) after two real steps."""
    from accelerate.utils import gather_object

    from brainmri.config import load_config
    from brainmri.train.checkpoint import EpochTotals, capture_position
    from brainmri.train.engine import Engine
    from brainmri.train.phases import prepare_phase

    eng = Engine(load_config("configs/baseline_cnn.yaml", overrides(arch, 10, scratch_dir("ckpt-w-"), data_dir, 2)))
    eng.run.create()
    parts = eng.build()
    ph = prepare_phase(parts.model, parts.data, eng.cfg.phases[0], eng.cfg, eng.acc)
    eng._train_epoch(parts, ph, 1, None)  # optimizer state exists, as mid-run
    totals = EpochTotals.zeros("cpu")
    times = []
    for _ in range(repeats + 1):
        t = time.perf_counter()
        position = capture_position(1, 2, eng.acc.step, 0.0, totals, gather_object)
        eng._save_checkpoint(parts, eng.run.last_checkpoint, ph, position)
        times.append(time.perf_counter() - t)
    size = eng.run.last_checkpoint.stat().st_size
    return {"median_s": statistics.median(times[1:]), "runs_s": [round(x, 4) for x in times[1:]],
            "bytes": size, "amortised_at_10_min": statistics.median(times[1:]) / 600}


def whole_runs(arch: str, a: float, b: float, data_dir: str, steps: int, pairs: int) -> dict:
    """Alternate whole processes A (interval a) and B (interval b); the first pair is a warm-up."""
    def one(every: float) -> float:
        t = time.perf_counter()
        subprocess.run([sys.executable, __file__, "run", "--arch", arch, "--every", str(every), "--data-dir", data_dir,
                        "--steps", str(steps)], check=True, cwd=ROOT, capture_output=True,
                       env={**os.environ, "OMP_NUM_THREADS": "1"})
        return time.perf_counter() - t

    one(b)  # warm-up: page cache, phantoms, imports
    ta, tb = [], []
    for i in range(1, pairs + 1):
        if i % 2 == 0:
            x = one(a)
            y = one(b)
        else:  # B first every other pair, so a drift in machine speed hits both sides alike
            y = one(b)
            x = one(a)
        ta.append(x)
        tb.append(y)
    ratios = [x / y for x, y in zip(ta, tb, strict=True)]
    return {"a_every_min": a, "b_every_min": b, "a_median_s": statistics.median(ta),
            "b_median_s": statistics.median(tb), "ratio_median": statistics.median(ratios),
            "ratios": [round(r, 4) for r in ratios]}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("mode", nargs="?", default="all", choices=["all", "run"])
    p.add_argument("--arch", default="baseline_cnn", choices=sorted(ARCH))
    p.add_argument("--every", type=float, default=10.0, help="train.checkpoint_every_min for `run`")
    p.add_argument("--data-dir", default=os.path.join(os.environ.get("TMPDIR", "/tmp"), "brainmri-bench-phantoms"))
    p.add_argument("--steps", type=int, default=4, help="optimizer steps per run")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--pairs", type=int, default=2)
    args = p.parse_args()
    if args.mode == "run":
        run_once(args.arch, args.every, args.data_dir, args.steps)
        return
    import torch

    torch.set_num_threads(1)
    result = {"setup": {"data": "phantoms 16/class, 64 px, no augmentation", "optimizer": "adam, whole network",
                        "steps_per_run": args.steps, "threads": 1, "pairs": args.pairs}}
    for arch in ARCH:
        w = write_cost(arch, args.data_dir, args.repeats)
        r = {"checkpoint_write": w,
             "default_vs_disabled": whole_runs(arch, 10.0, 0.0, args.data_dir, args.steps, args.pairs)}
        result[arch] = r
        print(f"{arch}: one checkpoint {w['median_s']:.3f}s ({w['bytes'] / 1e6:.1f} MB), "
              f"{100 * w['amortised_at_10_min']:.3f}% of a 10-min interval; whole run default/disabled "
              f"{r['default_vs_disabled']['ratio_median']:.3f}", flush=True)
    write_result("checkpoint_cost", result)


if __name__ == "__main__":
    main()
