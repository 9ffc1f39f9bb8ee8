"""Does Grad-CAM point at the lesion? Energy and pointing-game scores per recipe on phantoms.

    python benchmarks/cam_pointing.py                       # baseline CNN (2 seeds) + ResNet-50 from scratch
    python benchmarks/cam_pointing.py --recipes baseline_cnn --seeds 0 1 2

Phantoms know where their lesion is (``brainmri.data.phantoms.lesion_mask``). Each recipe is trained on
a phantom set (``train.py``, a real run directory), then Grad-CAM (``brainmri.use.explain``, target
layer ``brainmri.models.registry.cam_target_layer``) explains the true class of every Testing image with a
lesion. Scores per image: **energy** = share of the map's mass inside the lesion mask; **pointing**
= the map's maximum lies inside the mask. Chance for both is the lesion's share of the image; a
centred Gaussian map (a "the lesion is somewhere in the middle" prior) is scored alongside.
Results: benchmarks/results/cam_pointing.json and benchmarks/RESULTS.md.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from _common import RESULTS, ROOT, scratch_dir, write_result

_R50 = ["model.pretrained=false", "data.batch_size=16", "train.mixed_precision=no", "data.cache='none'",
        "train.early_stop.enabled=false"]
RECIPES = {  # label → (recipe, overrides)
    "baseline_cnn": ("baseline_cnn", ["data.batch_size=16", "train.epochs=8"]),
    # from random initialisation: the recipe's two phases (head, then head + layer4), shortened;
    # CPU: fp32, no decoded cache
    "resnet50_finetune": ("resnet50_finetune", [*_R50, "train.phases.0.epochs=2", "train.phases.1.epochs=6"]),
    # from random initialisation, every layer trained (one phase)
    "resnet50_all": ("resnet50_finetune", [*_R50, "train.phases=[{name: all, epochs: 8, train: [all]}]"]),
}


def centre_prior(size: int) -> np.ndarray:
    y, x = np.mgrid[:size, :size]
    c = (size - 1) / 2
    return np.exp(-((x - c) ** 2 + (y - c) ** 2) / (2 * (size / 4) ** 2)).astype(np.float32)


def score(run: Path, root: Path) -> dict:
    import torch

    from brainmri.data.phantoms import lesion_mask
    from brainmri.use.explain import cam_maps, energy_in_mask, points_in_mask
    from brainmri.use.trained import load_trained

    trained = load_trained(run)
    out = {}
    prior = centre_prior(trained.cfg.data.input_size)
    for cls in ("glioma", "meningioma", "pituitary"):
        files = sorted((root / "Testing" / cls).glob("*.jpg"))
        inputs = trained.normalize(torch.stack([trained.decoder(p) for p in files]))
        maps = cam_maps(trained.model, inputs, [trained.classes.index(cls)] * len(files))
        with torch.no_grad():
            correct = (trained.model(inputs).argmax(1) == trained.classes.index(cls)).float().mean().item()
        masks = [lesion_mask(p) for p in files]
        out[cls] = {"n": len(files), "acc": correct,
                    "lesion_share": float(np.mean([m.mean() for m in masks])),
                    "energy": float(np.mean([energy_in_mask(c, m) for c, m in zip(maps, masks, strict=True)])),
                    "pointing": float(np.mean([points_in_mask(c, m) for c, m in zip(maps, masks, strict=True)])),
                    "centre_prior_energy": float(np.mean([energy_in_mask(prior, m) for m in masks])),
                    "centre_prior_pointing": float(np.mean([points_in_mask(prior, m) for m in masks]))}
    n = sum(v["n"] for v in out.values())
    out["all"] = {k: sum(v[k] * v["n"] for v in out.values()) / n for k in out["glioma"] if k != "n"}
    out["all"]["n"] = n
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--recipes", nargs="+", default=["baseline_cnn", "resnet50_finetune"], choices=list(RECIPES))
    p.add_argument("--append", action="store_true", help="add to the runs already in the result file")
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1])
    p.add_argument("--resnet-seeds", nargs="+", type=int, default=[0])
    p.add_argument("--n-per-class", type=int, default=40)
    p.add_argument("--n-test-per-class", type=int, default=15)
    p.add_argument("--image-size", type=int, default=64)
    args = p.parse_args()
    from brainmri.data.phantoms import generate_phantoms

    work = Path(scratch_dir("cam-bench-"))
    root = generate_phantoms(work / "data", n_per_class=args.n_per_class, n_test_per_class=args.n_test_per_class,
                             image_size=128, seed=0)
    env = {**os.environ, "WANDB_MODE": "disabled", "OMP_NUM_THREADS": "2", "BRAINMRI_CACHE": str(work / "cache")}
    results = []
    for label in args.recipes:
        recipe, overrides = RECIPES[label]
        for seed in (args.resnet_seeds if recipe.startswith("resnet") else args.seeds):
            run = work / f"{label}-{seed}"
            cmd = [sys.executable, str(ROOT / "train.py"), "--config", str(ROOT / "configs" / f"{recipe}.yaml"),
                   f"data.root={root}", f"run_dir={run}", f"seed={seed}", f"data.input_size={args.image_size}",
                   "data.num_workers=0", "wandb.enabled=false", *overrides]
            start = time.perf_counter()
            subprocess.run(cmd, check=True, env=env, cwd=ROOT, capture_output=True)
            train_s = time.perf_counter() - start
            scores = score(run, root)
            a = scores["all"]
            print(f"{label} seed {seed}: acc {a['acc']:.2f} energy {a['energy']:.3f} (share {a['lesion_share']:.3f}, "
                  f"centre prior {a['centre_prior_energy']:.3f}) pointing {a['pointing']:.2f}  [{train_s:.0f} s]")
            results.append({"label": label, "recipe": recipe, "seed": seed, "overrides": overrides,
                            "train_wall_s": train_s, "scores": scores})
    if args.append and (RESULTS / "cam_pointing.json").is_file():
        results = json.loads((RESULTS / "cam_pointing.json").read_text())["runs"] + results
    write_result("cam_pointing", {"phantoms": {"n_per_class": args.n_per_class, "n_test_per_class":
                                               args.n_test_per_class, "image_size": 128, "seed": 0},
                                  "model_image_size": args.image_size, "runs": results})


if __name__ == "__main__":
    main()
