"""Decoded-image cache: identical tensors to JPEG decoding, reuse across builds, one builder under concurrency."""

from __future__ import annotations

import multiprocessing as mp
import pickle
import time

import pytest
import torch

from conftest import make_samples

from brainmri.config import DataConfig
from brainmri.data.cache import DecodedCache
from brainmri.data.datasets import ImageDataset
from brainmri.data.transforms import Decoder, batch_normalizer, eval_transform, train_transform


class CountingDecoder(Decoder):
    def __init__(self, *args, delay: float = 0.0):
        super().__init__(*args)
        self.calls, self.delay = 0, delay

    def __call__(self, path):
        self.calls += 1
        time.sleep(self.delay)
        return super().__call__(path)


@pytest.fixture
def samples(tmp_path):
    return make_samples(tmp_path / "images")


def test_cached_and_uncached_paths_give_identical_tensors(samples, tmp_path):
    data_cfg = DataConfig(input_size=32, input_channels=3, augment=["hflip", "vflip", "rotation"], rotation_degrees=20)
    decoder = Decoder(32, 3)
    cache = DecodedCache.build(samples, decoder, tmp_path / "cache")
    for transform in (train_transform(data_cfg), eval_transform(data_cfg)):
        plain = ImageDataset(samples, decoder, transform)
        cached = ImageDataset(samples, decoder, transform, cache)
        for i in range(len(samples)):
            assert torch.equal(plain.raw(i), cached.raw(i))
            torch.manual_seed(100 + i)
            a, label_a, _ = plain[i]
            torch.manual_seed(100 + i)
            b, label_b, _ = cached[i]
            assert a.dtype == torch.uint8 and torch.equal(a, b) and label_a == label_b
            norm = batch_normalizer(data_cfg)  # and after the engine's per-batch float conversion
            assert norm(a[None]).dtype == torch.float32 and torch.equal(norm(a[None]), norm(b[None]))


def test_second_build_reuses_the_store_without_decoding(samples, tmp_path):
    first_decoder = CountingDecoder(32, 1)
    first = DecodedCache.build(samples, first_decoder, tmp_path)
    assert first.built and first_decoder.calls == len(samples) and first.shape == (len(samples), 1, 32, 32)
    mtime = first.data_path.stat().st_mtime_ns

    again_decoder = CountingDecoder(32, 1)
    again = DecodedCache.build(samples, again_decoder, tmp_path)
    assert not again.built and again_decoder.calls == 0
    assert again.data_path == first.data_path and again.data_path.stat().st_mtime_ns == mtime
    assert all(torch.equal(first(i), again(i)) for i in range(len(samples)))

    # another size, or other file contents, is another store
    assert DecodedCache.build(samples, Decoder(16, 1), tmp_path).data_path != first.data_path
    assert DecodedCache.build(samples[::-1], Decoder(32, 1), tmp_path).data_path != first.data_path


def test_cache_is_picklable_for_dataloader_workers(samples, tmp_path):
    decoder = Decoder(24, 3)
    cache = DecodedCache.build(samples, decoder, tmp_path)
    cache(0)  # opens the memmap; pickling must not carry it
    clone = pickle.loads(pickle.dumps(cache))
    assert clone._mm is None and torch.equal(clone(3), decoder(samples[3].path))
    ds = ImageDataset(samples, decoder, eval_transform(DataConfig(input_channels=3)), cache)
    batches = list(torch.utils.data.DataLoader(ds, batch_size=4, num_workers=2))
    expected = torch.stack([ds[i][0] for i in range(len(ds))])
    assert torch.equal(torch.cat([b[0] for b in batches]), expected)


def _build_in_child(samples, cache_dir, barrier, queue):
    barrier.wait()
    cache = DecodedCache.build(samples, CountingDecoder(32, 3, delay=0.02), cache_dir)
    queue.put((cache.built, str(cache.data_path)))


def test_concurrent_builders_produce_one_valid_store(samples, tmp_path):
    ctx = mp.get_context("fork")
    barrier, queue = ctx.Barrier(2), ctx.Queue()
    procs = [ctx.Process(target=_build_in_child, args=(samples, tmp_path, barrier, queue)) for _ in range(2)]
    for p in procs:
        p.start()
    results = [queue.get(timeout=60) for _ in procs]
    for p in procs:
        p.join(timeout=60)
        assert p.exitcode == 0
    assert sorted(built for built, _ in results) == [False, True]  # one decoded, the other waited and reused
    assert results[0][1] == results[1][1]
    cache = DecodedCache.build(samples, Decoder(32, 3), tmp_path)
    assert not cache.built
    decoder = Decoder(32, 3)
    assert all(torch.equal(cache(i), decoder(s.path)) for i, s in enumerate(samples))
    assert not list(tmp_path.glob("decoded/.*tmp*"))  # no temporary files left behind


def test_engine_trains_identically_with_and_without_the_cache(tmp_path):
    """Same seed, same augmentation draws: the decoded-image cache changes nothing but speed."""
    from conftest import TINY, run_train

    for label, name in enumerate(["glioma", "meningioma", "notumor", "pituitary"]):
        make_samples(tmp_path / "data" / "Training" / name, n=5, seed=label)
    runs = {}
    for cache in ("none", "decoded"):
        runs[cache] = tmp_path / cache
        run_train("--config", "configs/baseline_cnn.yaml", f"data.root={tmp_path / 'data'}", f"run_dir={runs[cache]}",
                  *TINY, "train.epochs=1", "data.augment=[hflip,rotation]", f"data.cache_dir={tmp_path / 'cache'}",
                  "wandb.enabled=false", *(["data.cache=decoded"] if cache == "decoded" else []))
    assert len(list((tmp_path / "cache" / "decoded").glob("*.npy"))) == 2  # train and val stores
    a, b = (torch.load(runs[c] / "checkpoints" / "last.pt", weights_only=True)["model"] for c in runs)
    for key in a:
        assert torch.equal(a[key], b[key]), key


def test_three_channel_images_store_one_grey_channel(samples, tmp_path):
    decoder = Decoder(24, 3)
    cache = DecodedCache.build(samples, decoder, tmp_path)
    assert cache.array().shape == (len(samples), 1, 24, 24) and cache.shape == (len(samples), 3, 24, 24)
    for i, s in enumerate(samples):
        assert torch.equal(cache(i), decoder(s.path))
