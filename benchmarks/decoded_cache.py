"""Decoded-image cache vs JPEG decoding on the real scans.

    python benchmarks/decoded_cache.py [--image-size 224] [--repeats 3] [--workers 0 2]

1. Data path alone: one pass of the DataLoader (batch 32, transforms applied, no model) over the
   training split, JPEG decoding vs the memory-mapped uint8 cache, for two augmentation presets:
   ``baseline`` (none, as configs/baseline_cnn.yaml) and ``augment`` (hflip + rotation 10°, as
   configs/resnet50_feature.yaml). As in the engine, loaders ship uint8 and each batch is converted
   to float and ImageNet-normalised once.
2. A full training epoch of the baseline CNN (``--model-size`` px, default 64) with each data path.
Also reports the one-time cost of building the cache.
"""

from __future__ import annotations

import argparse

import torch

from _common import DATA_ROOT, ratio, scratch_dir, summary, timed, write_result

from brainmri.config import DataConfig, ModelConfig
from brainmri.data.cache import DecodedCache
from brainmri.data.datasets import ImageDataset, build_split, make_loader
from brainmri.data.transforms import Decoder, batch_normalizer, train_transform
from brainmri.models.registry import build_model

PRESETS = {
    "baseline": [],  # no augmentation, as configs/baseline_cnn.yaml
    "augment": ["hflip", "rotation"],  # as resnet50_feature / resnet152_ranger
}
NORMALIZE = batch_normalizer(DataConfig(input_channels=3))  # the engine's per-batch uint8 → float step


def make_transform(preset: str, size: int):
    return train_transform(DataConfig(input_size=size, input_channels=3, augment=PRESETS[preset],
                                      rotation_degrees=10.0))


def data_pass(loader) -> None:
    """What the host does for a GPU trainer: decode (or read the cache), augment, collate uint8."""
    for _ in loader:
        pass


def data_pass_cpu_normalize(loader) -> None:
    """The same plus the per-batch float conversion + normalisation, which a CPU trainer pays on the host."""
    for x, _, _ in loader:
        NORMALIZE(x)


def train_pass(loader, model, opt) -> None:
    model.train()
    for x, y, _ in loader:
        loss = torch.nn.functional.cross_entropy(model(NORMALIZE(x)), y)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)


def compare(make_dataset, run, repeats: int) -> dict:
    """Median time of ``run(dataset)`` for the JPEG and the cached dataset, alternating, after a warm-up each."""
    times = {"jpeg": [], "cached": []}
    for r in range(repeats + 1):
        for name in ("jpeg", "cached"):
            t = timed(lambda name=name: run(make_dataset(name)))
            if r:
                times[name].append(t)
    out = {name: summary(ts) for name, ts in times.items()}
    out["speedup"] = ratio(out["jpeg"], out["cached"])
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data-root", default=str(DATA_ROOT))
    p.add_argument("--image-size", type=int, default=224)
    p.add_argument("--model-size", type=int, default=64)
    p.add_argument("--limit", type=int, default=None, help="use the first N training images")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--workers", type=int, nargs="+", default=[0, 2])
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args()
    torch.set_num_threads(args.threads)

    samples = build_split(DataConfig(), args.data_root).train[: args.limit]
    cache_dir = scratch_dir("decoded_cache-")
    result = {"setup": {"images": len(samples), "image_size": args.image_size, "batch_size": 32,
                        "repeats": args.repeats, "threads": args.threads}, "data_path": {}}

    for size in sorted({args.image_size, args.model_size}):
        decoder = Decoder(size, 3)
        built = {}
        build_s = timed(lambda built=built, decoder=decoder:
                        built.setdefault("cache", DecodedCache.build(samples, decoder, cache_dir)))[0]
        reuse_s = timed(lambda decoder=decoder: DecodedCache.build(samples, decoder, cache_dir))[0]
        result[f"cache_build_{size}px"] = {"build_s": build_s, "reopen_s": reuse_s,
                                           "bytes": built["cache"].data_path.stat().st_size}
        print(f"{size}px cache: build {build_s:.2f}s, reopen {reuse_s * 1e3:.1f}ms", flush=True)

    decoder, cache = Decoder(args.image_size, 3), DecodedCache.build(samples, Decoder(args.image_size, 3), cache_dir)
    for preset in PRESETS:
        transform = make_transform(preset, args.image_size)
        for workers in args.workers:
            def dataset_loader(name, transform=transform, workers=workers):
                ds = ImageDataset(samples, decoder, transform, cache if name == "cached" else None)
                return make_loader(ds, 32, workers)

            for label, run in (("", data_pass), ("+cpu_normalize", data_pass_cpu_normalize)):
                res = compare(dataset_loader, run, args.repeats)
                res["images_per_s"] = {k: len(samples) / res[k]["median_s"] for k in ("jpeg", "cached")}
                result["data_path"][f"{preset}{label}/workers{workers}"] = res
                print(f"data path {preset}{label} workers={workers}: jpeg {res['jpeg']['median_s']:.2f}s "
                      f"cached {res['cached']['median_s']:.2f}s speedup {res['speedup']}", flush=True)

    decoder = Decoder(args.model_size, 3)
    cache = DecodedCache.build(samples, decoder, cache_dir)
    transform = make_transform("baseline", args.model_size)
    torch.manual_seed(0)
    model = build_model(ModelConfig(), 4, 3, args.model_size)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    res = compare(lambda name: make_loader(ImageDataset(samples, decoder, transform,
                                                        cache if name == "cached" else None), 32, 0),
                  lambda loader: train_pass(loader, model, opt), args.repeats)
    res["setup"] = {"model": "baseline_cnn", "image_size": args.model_size, "num_workers": 0, "transform": "baseline"}
    result["train_epoch"] = res
    print(f"train epoch baseline_cnn {args.model_size}px: jpeg {res['jpeg']['median_s']:.2f}s "
          f"cached {res['cached']['median_s']:.2f}s speedup {res['speedup']}", flush=True)
    write_result("decoded_cache", result)


if __name__ == "__main__":
    main()
