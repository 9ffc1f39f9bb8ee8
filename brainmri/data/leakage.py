"""Near-duplicate detection: image fingerprints, a candidate index, pair bands and groups.

A byte hash only finds identical files. MRI collections also hold the *same picture* re-encoded,
resized, shifted by a few pixels or with its brightness/contrast changed, and *neighbouring slices*
of one scan. This module scores every image against its nearest neighbours and sorts each pair
into a band:

  exact           identical bytes (SHA-1 of the file)
  near_identical  the same picture after re-encoding / resizing / a small shift / intensity change
  same_scan       overall the same anatomy at the same position (typically a neighbouring slice)
  novel           nothing that close

Two fingerprints per image, both from the grey image:
  * ``coarse``: the image reduced to 32×32, zero-mean, unit-norm. The dot product of two is their
    Pearson correlation at 32×32: unaffected by re-encoding, resizing, noise and global
    brightness/contrast, and high for neighbouring slices of one scan.
  * ``fine``: the 32×32 image minus its Gaussian blur (σ = 2 px) — the detail that tells two
    subjects of similar anatomy apart — taken twice: as is, and after moving the head's centre
    (the centroid of its Otsu mask) to the image centre, so that a shift of a few pixels does
    not change it. The pair's fine similarity is the higher of the two correlations.

Candidates come from two HNSW indices (faiss, inner product; building and querying grow as
n log n, so 100,000 images need no all-pairs comparison; below 20,000 images an exact flat
search is faster and is used instead): the ``k`` nearest neighbours of each image by coarse and
by aligned fine fingerprint, searched on the fingerprints projected onto their top 96 principal
axes (a tenth of the dimensions; a bound on what the projection drops discards pairs that cannot
reach a band without scoring them). Each remaining candidate pair is then scored exactly and
banded by the thresholds below (chosen on the real data set's contact sheets; see
``docs/leakage.md``). Groups are the connected components of the chosen bands' pairs
(union–find). Fingerprints are cached per file (path, size, mtime) beside the decoded-image cache.

Knows nothing about models, loaders or training.
"""

from __future__ import annotations

import hashlib
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from filelock import FileLock
from PIL import Image

from brainmri.atomic import atomic_path
from brainmri.data.cachedir import cache_base, cache_unwritable
from brainmri.data.files import load_pil

BANDS = ("exact", "near_identical", "same_scan", "novel")
NEAR_IDENTICAL = 0.97  # fine similarity at or above: the same picture
SAME_SCAN = 0.97  # coarse similarity at or above (and not the same picture): the same scan
GROUP_BANDS = {"exact": ("exact",), "near": ("exact", "near_identical"),
               "scan": ("exact", "near_identical", "same_scan")}

SIZE = 32  # fingerprint side
_WORK = 128  # side at which the head is centred before reduction
_BLUR = 2.0  # σ of the blur removed for the fine fingerprint, in fingerprint pixels
FORMAT = 1  # bump when the fingerprint changes: cached fingerprints of another format are recomputed


# ---------------------------------------------------------------------------------------------
# Fingerprints


def _unit(a: np.ndarray) -> np.ndarray:
    v = a.astype(np.float32).ravel()
    v -= v.mean()
    n = float(np.linalg.norm(v))
    return v / n if n > 0 else v


def _otsu(a: np.ndarray) -> float:
    hist, _ = np.histogram(a, 256, (0, 256))
    p = hist / max(hist.sum(), 1)
    w = np.cumsum(p)
    mu = np.cumsum(p * np.arange(256))
    between = (mu[-1] * w - mu) ** 2 / (w * (1 - w) + 1e-12)
    return float(np.argmax(between))


def _reduce(a: np.ndarray) -> np.ndarray:
    return np.asarray(Image.fromarray(a).resize((SIZE, SIZE), Image.Resampling.BILINEAR), dtype=np.float32)


def _detail(a: np.ndarray) -> np.ndarray:
    from scipy import ndimage  # only when fingerprints are computed: a cached audit skips the import

    return a - ndimage.gaussian_filter(a, _BLUR)


def fingerprint_image(img: Image.Image) -> np.ndarray:
    """(3, SIZE²) float32: coarse, fine as is, fine with the head centred — each unit-norm."""
    from scipy import ndimage

    grey = np.asarray(img.convert("L").resize((_WORK, _WORK), Image.Resampling.BILINEAR), dtype=np.float32)
    mask = grey > _otsu(grey)
    centred = grey
    if mask.any():
        cy, cx = ndimage.center_of_mass(mask)
        c = (_WORK - 1) / 2
        centred = ndimage.shift(grey, (c - cy, c - cx), order=1, mode="nearest")
    small = _reduce(grey)
    return np.stack([_unit(small), _unit(_detail(small)), _unit(_detail(_reduce(centred)))])


def fingerprint_file(path: str | Path) -> np.ndarray:

    return fingerprint_image(load_pil(path, 1))


def _cache_file(paths: list[str], cache_dir) -> Path:
    # one cache per set of data folders (<split>/<class>/file: the split folders), resolved once each
    parents = sorted({str(Path(d).resolve()) for d in {os.path.dirname(os.path.dirname(p)) for p in paths}})
    digest = hashlib.sha1("|".join(parents).encode()).hexdigest()[:16]
    return cache_base(cache_dir) / "fingerprints" / f"v{FORMAT}-{digest}.npz"


def fingerprints(paths: list[str], cache_dir=None, workers: int | None = None, progress: bool = False) -> np.ndarray:
    """Fingerprints of ``paths`` as an (n, 3, SIZE²) float32 array (float16 on disk), computed once per file.

    The cache holds every file of the same folders that was ever fingerprinted, keyed by path,
    size and mtime; a changed file is recomputed. Files that cannot be decoded get NaN rows
    (callers skip unreadable files before; see ``brainmri.data.split``).
    """
    cache = _cache_file(paths, cache_dir) if paths else None
    known: dict[str, tuple[int, int, int]] = {}
    stored = np.zeros((0, 3, SIZE * SIZE), np.float16)
    if cache is not None and cache.exists():
        try:
            with np.load(cache, allow_pickle=False) as z:
                stored = z["fp"]
                columns = (z["paths"].tolist(), z["sizes"].tolist(), z["mtimes"].tolist())
                for i, (p, s, m) in enumerate(zip(*columns, strict=True)):
                    known[p] = (s, m, i)
        except (OSError, ValueError, KeyError):
            known, stored = {}, np.zeros((0, 3, SIZE * SIZE), np.float16)
    stats = [os.stat(p) for p in paths]
    rows = np.empty(len(paths), np.int64)
    todo = []
    for j, (p, st) in enumerate(zip(paths, stats, strict=True)):
        hit = known.get(p)
        if hit and hit[0] == st.st_size and hit[1] == st.st_mtime_ns:
            rows[j] = hit[2]
        else:
            rows[j] = -1
            todo.append(j)
    out = np.empty((len(paths), 3, SIZE * SIZE), np.float32)
    have = rows >= 0
    out[have] = stored[rows[have]]
    if todo and cache is not None:  # todo is empty without paths, so without a cache file
        def one(j):
            try:
                return fingerprint_file(paths[j])
            except Exception:  # unreadable: reported by the scan, NaN here
                return np.full((3, SIZE * SIZE), np.nan, np.float32)

        with ThreadPoolExecutor(max_workers=workers or min(8, os.cpu_count() or 1)) as pool:
            it = pool.map(one, todo, chunksize=16)
            if progress:
                from tqdm.auto import tqdm

                it = tqdm(it, total=len(todo), desc="fingerprints", unit="img")
            for j, fp in zip(todo, it, strict=True):
                out[j] = fp
        try:
            _save_cache(cache, known, stored, paths, stats, out, todo)
        except OSError as e:  # full, read-only: computed again next time
            cache_unwritable("fingerprint", cache.parent, e)
    return out


def _save_cache(cache: Path, known, stored, paths, stats, out, todo) -> None:
    cache.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(cache) + ".lock"):
        merged_paths = list(known)
        merged = {p: stored[i] for p, (_, _, i) in known.items()}
        meta = {p: (s, m) for p, (s, m, _) in known.items()}
        for j in todo:
            p = paths[j]
            if p not in merged:
                merged_paths.append(p)
            merged[p] = out[j].astype(np.float16)
            meta[p] = (stats[j].st_size, stats[j].st_mtime_ns)
        with atomic_path(cache) as tmp:
            np.savez(tmp, paths=np.array(merged_paths, dtype=str),
                     sizes=np.array([meta[p][0] for p in merged_paths], np.int64),
                     mtimes=np.array([meta[p][1] for p in merged_paths], np.int64),
                     fp=np.stack([merged[p] for p in merged_paths]) if merged_paths else stored)


# ---------------------------------------------------------------------------------------------
# Index and pair scores


EXACT_SEARCH_MAX = 20_000  # below this many images an exact (flat) search is faster than building HNSW


def _hnsw(vectors: np.ndarray):
    import faiss

    if len(vectors) <= EXACT_SEARCH_MAX:
        flat = faiss.IndexFlatIP(vectors.shape[1])
        flat.add(np.ascontiguousarray(vectors, dtype=np.float32))
        return flat
    index = faiss.IndexHNSWFlat(vectors.shape[1], 32, faiss.METRIC_INNER_PRODUCT)
    index.hnsw.efConstruction = 80
    index.hnsw.efSearch = 128
    index.add(np.ascontiguousarray(vectors, dtype=np.float32))
    return index


def _search(index, queries: np.ndarray, k: int) -> np.ndarray:
    k = min(k, index.ntotal)
    _, ids = index.search(np.ascontiguousarray(queries, dtype=np.float32), k)
    return ids


def pair_scores(fa: np.ndarray, ia: np.ndarray, fb: np.ndarray, ib: np.ndarray,
                chunk: int = 4096) -> tuple[np.ndarray, np.ndarray]:
    """(coarse, fine) similarities of the pairs (fa[ia[t]], fb[ib[t]]) of fingerprint arrays."""
    coarse = np.empty(len(ia), np.float32)
    fine = np.empty(len(ia), np.float32)
    for s in range(0, len(ia), chunk):
        a, b = fa[ia[s:s + chunk]], fb[ib[s:s + chunk]]
        dots = np.einsum("ncd,ncd->nc", a, b)
        coarse[s:s + chunk] = dots[:, 0]
        fine[s:s + chunk] = dots[:, 1:].max(axis=1)
    return coarse, fine


def band_of(coarse: np.ndarray, fine: np.ndarray, exact: np.ndarray) -> np.ndarray:
    """Band index (into BANDS) per pair."""
    band = np.full(len(coarse), 3, np.int8)
    band[coarse >= SAME_SCAN] = 2
    band[fine >= NEAR_IDENTICAL] = 1
    band[exact] = 0
    return band


@dataclass
class Pairs:
    """Candidate pairs ``i < j`` (indices into the fingerprinted list) with scores and band."""

    i: np.ndarray
    j: np.ndarray
    coarse: np.ndarray
    fine: np.ndarray
    band: np.ndarray


SEARCH_DIM = 96  # candidate search runs on fingerprints projected onto their top principal axes


@dataclass
class _Projected:
    """Fingerprints in a PCA basis (for the search) and the norm of what the projection drops.

    For unit vectors a, b with projections pa, pb and residuals ra, rb: a·b = pa·pb + ra·rb, so
    ``pa·pb + |ra||rb|`` bounds a·b from above (Cauchy–Schwarz) — pairs whose bound is below every
    band threshold can be dropped without scoring them, and none is lost.
    """

    vec: np.ndarray  # (n, 3, SEARCH_DIM)
    res: np.ndarray  # (n, 3)


def _bases(fp: np.ndarray, seed: int = 0) -> list[np.ndarray]:
    """(SIZE², SEARCH_DIM) bases: one for the coarse channel, one shared by the two fine channels.

    The top right-singular vectors of a sample of at most 2,048 fingerprints (uncentred: the basis
    that keeps dot products best), by a randomised range finder (Halko et al. 2011, two power
    iterations): a few small matrix products instead of a 1,024² eigen-decomposition.
    """
    rng = np.random.default_rng(seed)
    sub = fp if len(fp) <= 2048 else fp[np.sort(rng.choice(len(fp), 2048, replace=False))]
    out = []
    for channels in ((0,), (1, 2)):
        x = np.ascontiguousarray(sub[:, channels].reshape(-1, fp.shape[-1]), dtype=np.float32)
        y = _orth(x @ rng.standard_normal((x.shape[1], SEARCH_DIM + 16)).astype(np.float32))
        for _ in range(2):
            y = _orth(x @ (x.T @ y))
        b = (y.T @ x).astype(np.float64)  # x ≈ y b; the right-singular vectors of b are x's
        s2, u = np.linalg.eigh(b @ b.T)
        top = np.argsort(s2)[::-1][:SEARCH_DIM]
        top = top[s2[top] > s2.max() * 1e-9]
        v = np.zeros((x.shape[1], SEARCH_DIM), np.float32)  # zero columns when the sample has lower rank
        v[:, :len(top)] = (b.T @ u[:, top]) / np.sqrt(np.maximum(s2[top], 1e-12))
        out.append(v)
    return out


def _orth(y: np.ndarray) -> np.ndarray:
    """Orthonormal columns spanning ``y`` (from its Gram matrix, twice for accuracy; columns that
    add nothing are dropped, so a sample of fewer images than dimensions works too)."""
    for _ in range(2):
        s, u = np.linalg.eigh((y.T @ y).astype(np.float64))
        keep = s > max(s.max(), 1e-30) * 1e-9
        y = y @ (u[:, keep] / np.sqrt(s[keep])).astype(np.float32)
    return y


def _project(fp: np.ndarray, bases: list[np.ndarray]) -> _Projected:
    vec = np.empty((len(fp), 3, SEARCH_DIM), np.float32)
    for c in range(3):
        vec[:, c] = fp[:, c] @ bases[0 if c == 0 else 1]
    sq = np.einsum("ncd,ncd->nc", fp, fp) - np.einsum("ncd,ncd->nc", vec, vec)  # |a|² = |Pa|² + |a - Pa|²
    return _Projected(vec, np.sqrt(np.clip(sq, 0.0, None)))


def _candidates(base: _Projected, k: int, queries: _Projected | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(query row, base row) candidate pairs from the coarse and the aligned-fine index."""
    q = base if queries is None else queries
    qi, bi = [], []
    for channel in (0, 2):
        ids = _search(_hnsw(base.vec[:, channel]), q.vec[:, channel], k)
        rows = np.repeat(np.arange(len(q.vec)), ids.shape[1])
        cols = ids.ravel()
        ok = cols >= 0
        qi.append(rows[ok])
        bi.append(cols[ok])
    return np.concatenate(qi), np.concatenate(bi)


def _upper_bounds(p: _Projected, i: np.ndarray, j: np.ndarray, slack: float = 1e-4) -> np.ndarray:
    """(pairs, 3): an upper bound of each channel's similarity of the pairs (i, j)."""
    return np.einsum("ncd,ncd->nc", p.vec[i], p.vec[j]) + p.res[i] * p.res[j] + slack


def _may_be_close(p: _Projected, i: np.ndarray, j: np.ndarray, chunk: int = 65536) -> np.ndarray:
    """Pairs whose similarity bound reaches a band threshold on some channel (in chunks: bounded memory)."""
    out = np.empty(len(i), bool)
    for s in range(0, len(i), chunk):
        upper = _upper_bounds(p, i[s:s + chunk], j[s:s + chunk])
        out[s:s + chunk] = (upper[:, 0] >= SAME_SCAN) | (upper[:, 1:].max(axis=1) >= NEAR_IDENTICAL)
    return out


def near_pairs(fp: np.ndarray, sha1: list[str], k: int = 8) -> Pairs:
    """Candidate pairs within one set of images, scored and banded; novel pairs dropped."""
    n = len(fp)
    if n < 2:
        e = np.zeros(0, np.int64)
        return Pairs(e, e, np.zeros(0, np.float32), np.zeros(0, np.float32), np.zeros(0, np.int8))
    proj = _project(fp, _bases(fp))
    a, b = _candidates(proj, k + 1)
    # identical bytes are always a pair, whether or not the index returned them
    by_hash: dict[str, list[int]] = {}
    for idx, h in enumerate(sha1):
        by_hash.setdefault(h, []).append(idx)
    extra = [(m[0], x) for m in by_hash.values() if len(m) > 1 for x in m[1:]]
    if extra:
        a = np.concatenate([a, np.array([e[0] for e in extra])])
        b = np.concatenate([b, np.array([e[1] for e in extra])])
    keep = a != b
    i, j = np.minimum(a, b)[keep], np.maximum(a, b)[keep]
    uniq = np.unique(i.astype(np.int64) * n + j)
    i, j = uniq // n, uniq % n
    hashes = np.array(sha1)
    exact = hashes[i] == hashes[j]
    keep = exact | _may_be_close(proj, i, j)
    i, j, exact = i[keep], j[keep], exact[keep]
    coarse, fine = pair_scores(fp, i, fp, j)
    band = band_of(coarse, fine, exact)
    keep = band < 3
    return Pairs(i[keep], j[keep], coarse[keep], fine[keep], band[keep])


@dataclass
class Nearest:
    """For each query: its nearest base image, their coarse and fine similarity, and the band."""

    index: np.ndarray  # into the base list; -1 when the base is empty
    coarse: np.ndarray
    fine: np.ndarray
    band: np.ndarray


def nearest(base_fp: np.ndarray, base_sha1: list[str], query_fp: np.ndarray, query_sha1: list[str],
            k: int = 8) -> Nearest:
    """Nearest base image of every query image, ranked by band first, then similarity."""
    m = len(query_fp)
    if m == 0 or len(base_fp) == 0:
        return Nearest(np.full(m, -1), np.full(m, np.nan, np.float32), np.full(m, np.nan, np.float32),
                       np.full(m, 3, np.int8))
    bases = _bases(base_fp)
    q, b = _candidates(_project(base_fp, bases), k, queries=_project(query_fp, bases))
    by_hash: dict[str, int] = {}
    for idx, h in enumerate(base_sha1):
        by_hash.setdefault(h, idx)
    exact_hits = [(qi, by_hash[h]) for qi, h in enumerate(query_sha1) if h in by_hash]
    if exact_hits:
        q = np.concatenate([q, np.array([e[0] for e in exact_hits])])
        b = np.concatenate([b, np.array([e[1] for e in exact_hits])])
    coarse, fine = pair_scores(query_fp, q, base_fp, b)
    exact = np.array(query_sha1)[q] == np.array(base_sha1)[b]
    band = band_of(coarse, fine, exact)
    # best candidate per query: lowest band, then highest coarse similarity
    order = np.lexsort((-coarse, band, q))
    q, b, coarse, fine, band = q[order], b[order], coarse[order], fine[order], band[order]
    first = np.ones(len(q), bool)
    first[1:] = q[1:] != q[:-1]
    out = Nearest(np.full(m, -1), np.full(m, np.nan, np.float32), np.full(m, np.nan, np.float32),
                  np.full(m, 3, np.int8))
    out.index[q[first]] = b[first]
    out.coarse[q[first]] = coarse[first]
    out.fine[q[first]] = fine[first]
    out.band[q[first]] = band[first]
    return out


# ---------------------------------------------------------------------------------------------
# Groups


def groups(n: int, pairs: Pairs, bands: tuple[str, ...]) -> np.ndarray:
    """Group id per image: connected components of the pairs in ``bands`` (union–find)."""
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    wanted = np.isin(pairs.band, [BANDS.index(b) for b in bands])
    i, j = pairs.i[wanted], pairs.j[wanted]
    graph = coo_matrix((np.ones(len(i), np.int8), (i, j)), shape=(n, n))
    _, labels = connected_components(graph, directed=False)
    return labels


def group_keys(fp: np.ndarray, sha1: list[str], group_by: str) -> list[str]:
    """A key per image (fingerprints ``fp``) such that one near-duplicate group shares it (for splitting)."""
    if group_by == "exact" or len(fp) < 2:
        return list(sha1)
    labels = groups(len(fp), near_pairs(fp, sha1), GROUP_BANDS[group_by])
    return [f"g{lab}" for lab in labels]


def band_columns(samples) -> dict[str, list]:
    """Per-sample ``nearest_train``, ``similarity`` and ``band`` columns for a predictions CSV."""
    return {"nearest_train": [s.nearest_train or "" for s in samples],
            "similarity": ["" if s.similarity is None else f"{s.similarity:.4f}" for s in samples],
            "band": [s.band or "" for s in samples]}


def describe_thresholds() -> dict:
    return {"near_identical_fine": NEAR_IDENTICAL, "same_scan_coarse": SAME_SCAN,
            "fingerprint": f"{SIZE}x{SIZE} grey; coarse Pearson; fine = detail (minus Gaussian σ={_BLUR}), "
                           "as is and head-centred", "format": FORMAT}

