"""Design check of the phantom cohort: slice-level splits leak patients, a held-out site scores lower.

    python benchmarks/cohort_shortcuts.py                 # 3 cohort seeds, 3 sites × 40 patients × 6 slices
    python benchmarks/cohort_shortcuts.py --seeds 0 --patients-per-site 20

For each cohort (``brainmri.data.phantoms.generate_cohort``, 64 px, default site profiles and
class shares) a logistic regression on 16 × 16 thumbnails (standardised per image) is scored four ways:
  random       5-fold CV over slices (a patient's neighbouring slices on both sides)
  patient      5-fold CV grouped by patient (stratified)
  within-site  the patient-grouped CV's accuracy, i.e. test patients from sites seen in training
  loso         leave one site out: train on the other sites, test on the held-out site (mean over sites)
The claim checked: random > patient, and loso < within-site; with --control (sites alike, equal class
shares) loso should come back to within-site.
"""

from __future__ import annotations

import argparse
import csv
import statistics
import time
from pathlib import Path

import numpy as np
from PIL import Image

from _common import scratch_dir, write_result

from brainmri.data.phantoms import Site, generate_cohort


def features(root: Path, px: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Images at ``px`` × ``px`` (standardised per image), labels, patients, sites."""
    with open(root / "manifest.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    x = np.stack([np.asarray(Image.open(root / r["path"]).convert("L").resize((px, px), Image.Resampling.BILINEAR),
                             np.float32) for r in rows])
    x = (x - x.mean((1, 2), keepdims=True)) / (x.std((1, 2), keepdims=True) + 1e-6)
    return x, *(np.array([r[key] for r in rows]) for key in ("label", "patient", "site"))


def logreg(c: float):
    from sklearn.linear_model import LogisticRegression

    def fit_score(x, y, train, test, seed: int) -> float:
        model = LogisticRegression(C=c, max_iter=2000).fit(x[train], y[train])
        return float((model.predict(x[test]) == y[test]).mean())

    return fit_score


def small_cnn(epochs: int):
    """The 4-layer CNN of tests/test_phantoms.py (the one that learns the phantoms), on the full images."""
    import torch

    def fit_score(x, y, train, test, seed: int) -> float:
        classes = sorted(set(y))
        images = torch.from_numpy(x).float()[:, None]
        labels = torch.tensor([classes.index(v) for v in y])
        gen = torch.Generator().manual_seed(seed)
        torch.manual_seed(seed)
        layers: list[torch.nn.Module] = []
        for c_in, c_out in ((1, 8), (8, 16), (16, 32), (32, 32)):
            layers += [torch.nn.Conv2d(c_in, c_out, 3, padding=1, bias=False), torch.nn.BatchNorm2d(c_out),
                       torch.nn.ReLU(), torch.nn.MaxPool2d(2)]
        net = torch.nn.Sequential(*layers, torch.nn.AdaptiveMaxPool2d(1), torch.nn.Flatten(),
                                  torch.nn.Linear(32, len(classes)))
        batch = 32
        steps = epochs * -(-len(train) // batch)
        opt = torch.optim.Adam(net.parameters(), lr=1e-2)
        sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=1e-2, total_steps=steps)
        train_t = torch.from_numpy(np.asarray(train))
        for _ in range(epochs):
            net.train()
            order = train_t[torch.randperm(len(train_t), generator=gen)]
            for i in range(0, len(order), batch):
                idx = order[i:i + batch]
                loss = torch.nn.functional.cross_entropy(net(images[idx]), labels[idx])
                opt.zero_grad()
                loss.backward()
                opt.step()
                sched.step()
        net.eval()
        with torch.no_grad():
            test_t = torch.from_numpy(np.asarray(test))
            return float((net(images[test_t]).argmax(1) == labels[test_t]).float().mean())

    return fit_score


def scores(x, y, patient, site, seed: int, fit_score, folds: int = 5) -> dict[str, float]:
    from sklearn.model_selection import StratifiedGroupKFold, StratifiedKFold

    flat = x.reshape(len(x), -1)

    def cv(splits) -> float:
        hits = [fit_score(x, y, tr, te, seed) * len(te) for tr, te in splits]
        return sum(hits) / len(y)

    out = {"random": cv(StratifiedKFold(folds, shuffle=True, random_state=seed).split(flat, y)),
           "patient": cv(StratifiedGroupKFold(folds, shuffle=True, random_state=seed).split(flat, y, patient))}
    out["within_site"] = out["patient"]
    per_site = {s: fit_score(x, y, np.flatnonzero(site != s), np.flatnonzero(site == s), seed)
                for s in sorted(set(site))}
    out["loso"] = statistics.mean(per_site.values())
    out.update({f"loso_{s}": v for s, v in per_site.items()})
    return out


def near_vs_patient(root: Path) -> dict[str, float]:
    """How far the near-duplicate grouping (``data.group_by=near``) recovers the patients."""
    import hashlib

    from brainmri.data.leakage import fingerprints, group_keys

    with open(root / "manifest.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    paths = [str(root / r["path"]) for r in rows]
    sha1 = [hashlib.sha1(Path(p).read_bytes()).hexdigest() for p in paths]
    keys = np.array(group_keys(fingerprints(paths, workers=0), sha1, "near"))
    patient = np.array([r["patient"] for r in rows])
    same_patient = (patient[:, None] == patient[None]) & ~np.eye(len(rows), dtype=bool)
    return {"same_patient_pairs_in_one_group": float((keys[:, None] == keys[None])[same_patient].mean()),
            "patients_split_over_groups": sum(len(set(keys[patient == p])) > 1 for p in set(patient)),
            "groups_joining_patients": sum(len(set(patient[keys == k])) > 1 for k in set(keys)),
            "patients": len(set(patient))}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--sites", default="A,B,C")
    p.add_argument("--patients-per-site", type=int, default=40)
    p.add_argument("--slices", type=int, default=6)
    p.add_argument("--size", type=int, default=64)
    p.add_argument("--px", type=int, default=16, help="thumbnail side the classifier sees")
    p.add_argument("--C", type=float, default=1.0, help="inverse L2 strength of the logistic regression")
    p.add_argument("--model", choices=("logreg", "cnn"), default="logreg",
                   help="logreg on --px thumbnails, or the 4-layer CNN on the full --size images")
    p.add_argument("--epochs", type=int, default=12, help="CNN epochs")
    p.add_argument("--folds", type=int, default=5, help="CV folds (the CNN may use fewer)")
    p.add_argument("--control", action="store_true",
                   help="control: all sites record alike (phantoms.Site()) and hold the classes in equal shares")
    p.add_argument("--near", action="store_true", help="only: how far near-duplicate groups recover the patients")
    args = p.parse_args()
    import torch
    from threadpoolctl import threadpool_limits

    threadpool_limits(1)  # small fits: BLAS threads only fight the other jobs on a shared machine
    torch.set_num_threads(1)
    scratch = Path(scratch_dir("brainmri-cohort-shortcuts"))
    runs = []
    start = time.perf_counter()
    for seed in args.seeds:
        sites = args.sites.split(",")
        control = {"site_profiles": dict.fromkeys(sites, Site()), "prevalence": dict.fromkeys(sites, [1] * 4)}
        root = generate_cohort(scratch / f"seed{seed}", sites=sites, n_patients_per_site=args.patients_per_site,
                               slices_per_patient=args.slices, image_size=args.size, seed=seed,
                               **(control if args.control else {}))
        if args.near:
            result = {"seed": seed, **near_vs_patient(root)}
            print(result, flush=True)
            runs.append(result)
            continue
        if args.model == "logreg":
            x, y, patient, site = features(root, args.px)
            result = {"seed": seed, **scores(x.reshape(len(x), -1), y, patient, site, seed, logreg(args.C))}
        else:
            result = {"seed": seed, **scores(*features(root, args.size), seed, small_cnn(args.epochs),
                                             folds=args.folds)}
        print({k: round(v, 3) if isinstance(v, float) else v for k, v in result.items()}, flush=True)
        runs.append(result)
    if args.near:
        write_result("cohort_near_groups", {"args": vars(args), "runs": runs})
        return
    keys = [k for k in runs[0] if k != "seed"]
    agg = {k: {"mean": statistics.mean(r[k] for r in runs),
               "sd": statistics.stdev(r[k] for r in runs) if len(runs) > 1 else 0.0} for k in keys}
    for k in ("random", "patient", "within_site", "loso"):
        print(f"{k:12s} {agg[k]['mean']:.3f} ± {agg[k]['sd']:.3f}")
    holds = {"random_gt_patient": all(r["random"] > r["patient"] for r in runs),
             "loso_lt_within_site": all(r["loso"] < r["within_site"] for r in runs)}
    print(holds, f"{time.perf_counter() - start:.1f} s")
    name = "cohort_shortcuts" + ("_cnn" if args.model == "cnn" else "") + ("_control" if args.control else "")
    write_result(name, {"args": vars(args), "runs": runs, "aggregate": agg, "holds_every_seed": holds,
                                      "wall_s": time.perf_counter() - start})


if __name__ == "__main__":
    main()
