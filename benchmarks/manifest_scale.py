"""Reading and checking a manifest at scale: 10k and 100k rows, cold (every file hashed and decoded once
into the file index) and warm (the index cached, as on every later run).

The files are tiny distinct PNGs (8×8 grey, so the timings are the manifest's own work: parsing, path
resolution, stat, index look-up and the row checks, not JPEG decoding), four classes, 3 slices per
patient, 4 sites, a split column with 20 % test patients and a metadata column; 1 % of the rows are
bad (missing file, empty label, duplicate path, a patient in two split values) and listed as skipped.

    python benchmarks/manifest_scale.py                  # n = 10k, 100k
    python benchmarks/manifest_scale.py --sizes 10000
"""

from __future__ import annotations

import argparse
import os
import time

import numpy as np

from _common import machine, scratch_dir, write_result  # noqa: F401  (sys.path set up by _common)


def make(base: str, n: int) -> str:
    from PIL import Image

    os.makedirs(os.path.join(base, "img"), exist_ok=True)
    rows = ["path,label,patient,site,split,scanner"]
    classes = ("glioma", "meningioma", "notumor", "pituitary")
    for k in range(n):
        rel = f"img/{k // 1000:03d}/{k}.png"
        full = os.path.join(base, rel)
        if k % 1000 == 0:
            os.makedirs(os.path.dirname(full), exist_ok=True)
        pixels = np.frombuffer(k.to_bytes(8, "little") * 8, np.uint8).reshape(8, 8)
        Image.fromarray(pixels).save(full)
        patient = k // 3
        split = "test" if patient % 5 == 0 else ""
        label = classes[patient % 4]
        bad = k % 100 == 99  # 1 % bad rows, of four kinds
        kind = (k // 100) % 4
        if bad and kind == 0:
            rel = f"img/missing/{k}.png"
        elif bad and kind == 1:
            label = ""
        elif bad and kind == 2:
            rel = f"img/{(k - 1) // 1000:03d}/{k - 1}.png"
            label = classes[((k - 1) // 3) % 4]
            patient = (k - 1) // 3
            split = "test" if patient % 5 == 0 else ""
        elif bad and kind == 3:
            split = "" if split == "test" else "test"
        rows.append(f"{rel},{label},P{patient},site{patient % 4},{split},scanner-{k % 7}")
    path = os.path.join(base, "scans.csv")
    with open(path, "w") as f:
        f.write("\n".join(rows) + "\n")
    return path


def one(n: int) -> dict:
    from brainmri.data.manifest import read_manifest

    base = scratch_dir(f"manifest{n}-")
    os.environ["BRAINMRI_CACHE"] = os.path.join(base, "cache")
    t0 = time.perf_counter()
    path = make(base, n)
    make_s = time.perf_counter() - t0
    t0, c0 = time.perf_counter(), time.process_time()
    source = read_manifest(path)
    cold = time.perf_counter() - t0, time.process_time() - c0
    warm = []
    for _ in range(3):
        t0, c0 = time.perf_counter(), time.process_time()
        again = read_manifest(path)
        warm.append((time.perf_counter() - t0, time.process_time() - c0))
    assert len(again.samples) == len(source.samples)
    reasons: dict[str, int] = {}
    for s in source.skipped:
        key = "patient in two split values" if s["error"].startswith("patient ") else s["error"].split(" (")[0]
        reasons[key] = reasons.get(key, 0) + 1
    return {"n": n, "make_files_s": round(make_s, 1), "cold_s": round(cold[0], 2), "cold_cpu_s": round(cold[1], 2),
            "warm_s": [round(w, 2) for w, _ in warm], "warm_cpu_s": [round(c, 2) for _, c in warm],
            "usable": len(source.samples), "skipped": len(source.skipped), "reasons": reasons}


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000])
    args = p.parse_args()
    rows = []
    for n in args.sizes:
        rows.append(one(n))
        print(rows[-1], flush=True)
    write_result("manifest_scale", {"rows": rows})


if __name__ == "__main__":
    main()
