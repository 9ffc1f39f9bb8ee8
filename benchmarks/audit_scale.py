"""Near-duplicate search at scale: time and peak memory from 10k to 100k images, planted-pair recall.

Images are phantoms (brainmri.data.phantoms, 96 px: fingerprints are 32×32 whatever the size) of which
5 % get one planted copy (JPEG re-encode, resize round trip, 2–3 px shift, contrast change or
noise). Fingerprinting is per image (linear, measured once per 1,000 images); the part that could
grow as n² is the candidate search + scoring + grouping, measured here in a fresh process per n.

    python benchmarks/audit_scale.py                  # n = 10k, 20k, 50k, 100k
    python benchmarks/audit_scale.py --sizes 10000 20000
"""

from __future__ import annotations

import argparse
import io
import json
import resource
import subprocess
import sys
import time

import numpy as np

from _common import ROOT, machine, write_result  # noqa: F401  (sys.path set up by _common)


def _make(n: int, seed: int = 0):
    from PIL import Image, ImageEnhance
    from scipy import ndimage

    from brainmri.data import leakage as L
    from brainmri.data.phantoms import CLASSES, render_phantom

    rng = np.random.default_rng(seed)
    n_plant = n // 20
    base = n - n_plant
    fps = np.empty((n, 3, L.SIZE * L.SIZE), np.float32)
    imgs = {}
    t0 = time.perf_counter()
    for k in range(base):
        a = render_phantom(CLASSES[k % 4], np.random.default_rng([seed, k]), 96)
        img = Image.fromarray(a)
        fps[k] = L.fingerprint_image(img)
        if k < n_plant:
            imgs[k] = img
    fp_s = (time.perf_counter() - t0) / base * 1000

    def jpeg(im):
        b = io.BytesIO()
        im.save(b, "JPEG", quality=55)
        return Image.open(io.BytesIO(b.getvalue()))

    kinds = [jpeg, lambda im: im.resize((64, 64)).resize((96, 96)),
             lambda im: Image.fromarray(ndimage.shift(np.asarray(im), (2, -3), order=0, mode="nearest")),
             lambda im: ImageEnhance.Contrast(im).enhance(1.3),
             lambda im: Image.fromarray(np.clip(np.asarray(im, np.float32) + rng.normal(0, 8, (96, 96)), 0, 255)
                                        .astype(np.uint8))]
    truth = set()
    for t in range(n_plant):
        fps[base + t] = L.fingerprint_image(kinds[t % 5](imgs[t]).convert("L"))
        truth.add((t, base + t))
    return fps, truth, fp_s


def one(n: int) -> dict:
    from brainmri.data import leakage as L

    fps, truth, fp_ms = _make(n)
    sha = [str(i) for i in range(n)]
    t0, c0 = time.perf_counter(), time.process_time()
    pairs = L.near_pairs(fps, sha)
    groups = L.groups(n, pairs, L.GROUP_BANDS["near"])
    search_s, search_cpu = time.perf_counter() - t0, time.process_time() - c0
    near = {(int(i), int(j)) for i, j, b in zip(pairs.i, pairs.j, pairs.band, strict=True) if b <= 1}
    hit = len(near & truth)
    return {"n": n, "search_group_s": round(search_s, 2), "search_group_cpu_s": round(search_cpu, 2),
            "fingerprint_ms_per_image": round(fp_ms, 2),
            "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
            "planted": len(truth), "recall": hit / len(truth), "precision": hit / max(len(near), 1),
            "groups": int(groups.max() + 1)}


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--sizes", type=int, nargs="+", default=[10_000, 20_000, 50_000, 100_000])
    p.add_argument("--one", type=int, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.one:
        print(json.dumps(one(args.one)))
        return
    rows = []
    for n in args.sizes:
        out = subprocess.run([sys.executable, __file__, "--one", str(n)], capture_output=True, text=True, check=True)
        rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
        print(rows[-1], flush=True)
    write_result("audit_scale", {"machine": machine(), "rows": rows})


if __name__ == "__main__":
    main()
