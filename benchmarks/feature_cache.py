"""Feature-extraction epoch: frozen ResNet-50 backbone recomputed every epoch vs the feature cache.

    python benchmarks/feature_cache.py [--images 256] [--image-size 224] [--repeats 3]

Both sides train only the linear head (Adam) on the same real images (decoded-image cache, eval
transform, batch 32). ``recompute`` runs the engine's path: the full model in train mode with
frozen BatchNorm, forward through the backbone every step. ``cached`` trains the head on the
features from ``brainmri.train.features.build_feature_cache``. ResNet-50 weights are random (no
ImageNet checkpoint on this machine): the compute is identical to a pretrained one.
"""

from __future__ import annotations

import argparse

import torch
from torchvision import models as tvm

from _common import DATA_ROOT, ratio, scratch_dir, summary, timed, write_result

from brainmri.config import DataConfig
from brainmri.data.cache import DecodedCache
from brainmri.data.datasets import ImageDataset, build_split, make_loader
from brainmri.data.transforms import Decoder, batch_normalizer, eval_transform
from brainmri.models.registry import freeze_frozen_norms, set_trainable
from brainmri.train.features import FeatureDataset, build_feature_cache


def head_epoch(model, loader, opt, forward) -> None:
    for x, y, _ in loader:
        loss = torch.nn.functional.cross_entropy(forward(x), y)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data-root", default=str(DATA_ROOT))
    p.add_argument("--images", type=int, default=256)
    p.add_argument("--image-size", type=int, default=224)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--epochs-for-amortized", type=int, default=10)
    args = p.parse_args()
    torch.set_num_threads(args.threads)

    samples = build_split(DataConfig(), args.data_root).train[: args.images]
    decoder = Decoder(args.image_size, 3)
    cache = DecodedCache.build(samples, decoder, scratch_dir("feature_cache-"))
    dataset = ImageDataset(samples, decoder, eval_transform(DataConfig(input_channels=3)), cache)

    torch.manual_seed(0)
    model = tvm.resnet50(weights=None)
    model.fc = torch.nn.Linear(model.fc.in_features, 4)
    set_trainable(model, ["head"])
    opt = torch.optim.Adam(model.fc.parameters(), lr=1e-3)
    image_loader = make_loader(dataset, args.batch_size, 0)
    norm = batch_normalizer(DataConfig(input_channels=3))  # loaders ship uint8; the engine normalises per batch

    with torch.inference_mode():  # warm-up, so the timed build does not pay one-off allocator costs
        model.eval()(norm(next(iter(image_loader))[0]))
    built = {}
    build_s = timed(lambda: built.setdefault("f", build_feature_cache(model, dataset, 1, args.batch_size,
                                                                      to_input=norm)))[0]
    features = built["f"]
    feature_loader = make_loader(FeatureDataset(features, samples), args.batch_size, 0)

    def recompute() -> None:
        model.train()
        freeze_frozen_norms(model)
        head_epoch(model, image_loader, opt, lambda x: model(norm(x)))

    def cached() -> None:
        model.train()
        head_epoch(model, feature_loader, opt, model.fc)

    times = {"recompute": [], "cached": []}
    for r in range(args.repeats + 1):
        for name, fn in (("recompute", recompute), ("cached", cached)):
            t = timed(fn)
            if r:
                times[name].append(t)
        print(f"repeat {r}: recompute {times['recompute'][-1:]} cached {times['cached'][-1:]}", flush=True)

    rec, cac = summary(times["recompute"]), summary(times["cached"])
    e = args.epochs_for_amortized
    amortized = {v: (v * build_s + e * cac["median_s"]) / e for v in (1, 2, 5)}
    write_result("feature_cache", {
        "setup": {"images": len(samples), "image_size": args.image_size, "batch_size": args.batch_size,
                  "backbone": "resnet50 (random init, frozen, eval-mode BN)", "head": "linear 2048->4, adam",
                  "threads": args.threads, "repeats": args.repeats},
        "recompute_epoch": rec, "cached_epoch": cac,
        "speedup_per_epoch": ratio(rec, cac),
        "cache_build_s_per_view": build_s,
        f"amortized_epoch_s_over_{e}_epochs": {f"views={v}": s for v, s in amortized.items()},
        f"amortized_speedup_over_{e}_epochs": {f"views={v}": rec["median_s"] / s for v, s in amortized.items()},
        "target": ">= 10x per epoch", "meets_target": rec["median_s"] / cac["median_s"] >= 10})
    print(f"recompute {rec['median_s']:.2f}s cached {cac['median_s'] * 1e3:.1f}ms "
          f"speedup {rec['median_s'] / cac['median_s']:.0f}x; build {build_s:.2f}s/view")


if __name__ == "__main__":
    main()
