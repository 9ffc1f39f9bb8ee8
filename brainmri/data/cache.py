"""Decoded-image cache: decode every image once into a memory-mapped store on disk.

One store per (ordered sample content hashes, decoder key): ``<key>.npy`` holds an (N, 1, H, W)
uint8 array (uint16 for a deep decoder: DICOM at full precision) and ``<key>.json`` its metadata.
MRI slices reach the model as grey-scale (replicated
to 3 channels for ImageNet backbones), so one channel is stored and expanded on read: a third of
the bytes. The json is written last (atomically), so its
presence marks a complete store. A file lock makes concurrent builders (DDP ranks, parallel sweep
tasks) build it once: the first decodes, the others wait and reuse it.
"""

from __future__ import annotations

import hashlib
import json
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch
from filelock import FileLock

from brainmri.atomic import atomic_path, write_json
from brainmri.data.cachedir import cache_base, cache_unwritable

FORMAT = 2


def cache_root(cache_dir: str | Path | None = None) -> Path:
    return cache_base(cache_dir) / "decoded"


def _cache_key(samples, decoder) -> str:
    h = hashlib.sha1(f"v{FORMAT}|{decoder.key()}|".encode())
    for s in samples:
        h.update(s.sha1.encode())
    return h.hexdigest()[:24]


class DecodedCache:
    """``cache(i)`` → the decoded tensor (C, H, W; uint8, or uint16 from a deep decoder) of ``samples[i]``;
    picklable for DataLoader workers."""

    def __init__(self, data_path: Path, shape: tuple[int, ...], built: bool = False):
        self.data_path = Path(data_path)
        self.shape = tuple(shape)  # what ``cache(i)`` returns, stacked: (N, C, H, W); one channel is stored
        self.built = built  # True when this call decoded the images (False: reused a store)
        self._mm: np.ndarray | None = None

    @classmethod
    def build_or_none(cls, samples, decoder, cache_dir: str | Path | None = None) -> DecodedCache | None:
        """:meth:`build`, or None (one warning) when the store cannot be written: images are then decoded as read."""
        try:
            return cls.build(samples, decoder, cache_dir)
        except OSError as e:
            cache_unwritable("decoded-image", cache_root(cache_dir), e)
            return None

    @classmethod
    def build(cls, samples, decoder, cache_dir: str | Path | None = None, workers: int | None = None) -> DecodedCache:
        """Open the store for ``samples`` decoded by ``decoder``, building it first if needed."""
        if not samples:
            raise ValueError("DecodedCache.build: no samples")
        root = cache_root(cache_dir)
        root.mkdir(parents=True, exist_ok=True)
        key = _cache_key(samples, decoder)
        data_path, meta_path = root / f"{key}.npy", root / f"{key}.json"
        cache = cls._open(data_path, meta_path, len(samples))
        if cache is not None:
            return cache
        with FileLock(str(root / f"{key}.lock")):
            cache = cls._open(data_path, meta_path, len(samples))  # another process built it meanwhile
            if cache is not None:
                return cache
            first = decoder(samples[0].path)
            shape = (len(samples), *first.shape)
            dtype = first.numpy().dtype  # uint8, or uint16 from a deep (DICOM) decoder
            needed = shape[0] * int(np.prod(shape[2:])) * dtype.itemsize
            with atomic_path(data_path, needed=needed) as tmp:
                store = np.lib.format.open_memmap(tmp, mode="w+", dtype=dtype, shape=(shape[0], 1, *shape[2:]))

                def put(i: int) -> None:
                    img = first if i == 0 else decoder(samples[i].path)
                    if tuple(img.shape) != shape[1:] or img.dtype != first.dtype:
                        raise ValueError(f"{samples[i].path}: decoded to {tuple(img.shape)} {img.dtype}, "
                                         f"expected {shape[1:]} {first.dtype}")
                    if not torch.equal(img[0], img[-1]):
                        raise ValueError(f"{samples[i].path}: decoded to a colour image; the cache stores grey-scale")
                    store[i] = img[:1].numpy()  # noqa: F821  (deleted only after every put)

                # PIL releases the GIL while decoding, so threads overlap the JPEG work
                with ThreadPoolExecutor(workers or min(8, os.cpu_count() or 1)) as pool:
                    list(pool.map(put, range(len(samples))))
                store.flush()
                del store
            write_json(meta_path, {"format": FORMAT, "decoder": decoder.key(), "shape": list(shape),
                                   "sha1": [s.sha1 for s in samples]})
        return cls(data_path, shape, built=True)

    @classmethod
    def _open(cls, data_path: Path, meta_path: Path, n: int) -> DecodedCache | None:
        try:
            meta = json.loads(meta_path.read_text())
        except (OSError, ValueError):
            return None
        if meta.get("format") != FORMAT or meta["shape"][0] != n or not data_path.is_file():
            return None
        return cls(data_path, tuple(meta["shape"]))

    def __len__(self) -> int:
        return self.shape[0]

    def array(self) -> np.ndarray:
        """The read-only (N, 1, H, W) memmap, opened lazily (so each DataLoader worker opens its own)."""
        if self._mm is None:
            self._mm = np.load(self.data_path, mmap_mode="r")
        return self._mm

    def __call__(self, i: int) -> torch.Tensor:
        gray = torch.from_numpy(np.array(self.array()[i]))
        return gray.expand(self.shape[1], -1, -1).contiguous() if self.shape[1] > 1 else gray

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_mm": None}
