"""Prediction's training reference: read from split.json's file list vs rebuilding the split by a scan.

Before a prediction can say which training image each input resembles, it needs the run's training
images and their fingerprints. brainmri reads them from the run's ``split.json`` (relative paths and
content hashes; each file's size and mtime checked against the scan's index); it used to rescan
the data root and rebuild the split. One process per measurement, warm caches (the fingerprints
and the scan's index exist), real scans:

    python benchmarks/predict_reference.py --prepare            # a run dir whose split.json lists the real set
    python benchmarks/predict_reference.py --mode split-json    # what prediction does now
    python benchmarks/predict_reference.py --mode rebuild       # what it did before
"""

from __future__ import annotations

import argparse
import time

from _common import DATA_ROOT, ROOT, write_result

RUN = ROOT / "benchmarks" / "cache" / "predict_reference" / "run"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--prepare", action="store_true")
    p.add_argument("--mode", choices=("split-json", "rebuild"))
    p.add_argument("--data-root", default=str(DATA_ROOT))
    args = p.parse_args()
    from brainmri.config import load_config
    from brainmri.data.leakage import fingerprints
    from brainmri.rundir import RunDir

    cfg = load_config("configs/baseline_cnn.yaml", [f"data.root={args.data_root}", f"run_dir={RUN}"])
    run = RunDir(RUN)
    start = time.perf_counter()
    if args.prepare:
        from brainmri.data.datasets import build_split

        run.create()
        run.save_config(cfg.to_dict())
        split = build_split(cfg.data, args.data_root)
        run.write_split(split.record())
        fingerprints([s.path for s in split.train], cfg.data.cache_dir)
        print(f"prepared {RUN}: {len(split.train)} training images")
        return
    if args.mode == "split-json":
        from brainmri.data.datasets import Split

        split = Split.from_record(run.read_split())
        split.check_unchanged(parts=("train",))
    else:
        from brainmri.data.datasets import build_split

        split = build_split(cfg.data, args.data_root)
    fp = fingerprints([s.path for s in split.train], cfg.data.cache_dir)
    took = time.perf_counter() - start
    print(f"{args.mode}: {len(split.train)} training images, fingerprints {fp.shape}, {took:.2f} s")
    write_result(f"predict_reference_{args.mode}", {"mode": args.mode, "train_images": len(split.train),
                                                    "seconds_in_process": took})


if __name__ == "__main__":
    main()
