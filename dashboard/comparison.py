"""What the Compare page draws, computed without drawing (cached; pages draw).

Everything comes from :mod:`clipgeom.compare` (the property table, the
row-aligned cross-space measures) and from each side's own arrays: raw
norms, exact conformity (Double-Ellipsoid Def. 1), the singular spectrum
(RankMe's distribution), and the report's Sep(l) and alpha-shift curves.
Per-item arrays are kept for at most :data:`MAX_ITEMS` rows per side and
modality (a seeded sample, said on the page), so the page's working set
stays bounded however large the datasets are.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import streamlit as st

from clipgeom import compare, conformity, measures, store, timeline
from clipgeom.errors import InputError

from . import data

MODS = ("image", "text")
MAX_SIDES = 6
MAX_ITEMS = 20_000          # per side and modality for distributions (conformity is exact)
SCATTER_POINTS = 5_000      # conformity A vs B scatter
GAP_POINTS = 1_500          # per modality in the gap picture
#: the bundled comparison the page opens on: one world, three training objectives
DEFAULT_SIDES = ("demo", "demo-siglip", "demo-euclip")
#: table rows left out of "the cell that differs most" (settings, or sweeps on a 0.1 grid)
NOT_COMPARED = {"n_pairs", "dim", "temperature", "alpha_sweep.both.argmin",
                "alpha_sweep.image.argmin", "alpha_sweep.text.argmin"}


# ---------------------------------------------------------------- what can be picked


def choices() -> list[str]:
    """Stored and bundled datasets, then each training snapshot as ``name@step``."""
    names = [n for n in data.dataset_names() if n != data.SYNTHETIC]
    out = list(names)
    for name in names:
        try:
            ds = store.open_dataset(name)
        except Exception:      # listed but unreadable: the catalog says why elsewhere
            continue
        if timeline.has_snapshots(ds):
            out += [f"{name}@{s}" for s in timeline.snapshot_steps(ds)]
    return out


def default_sides(available: list[str]) -> list[str]:
    """CLIP vs SigLIP vs Euclidean logits when bundled, else the demo at random
    initialisation vs trained (its first and last snapshots, row-aligned), else
    the first two."""
    want = [s for s in DEFAULT_SIDES if s in available]
    if len(want) >= 2:
        return want
    snaps = [s for s in available if s.startswith("demo@")]
    if len(snaps) >= 2:
        return [snaps[0], snaps[-1]]
    return available[:2]


def fingerprint(spec: str) -> str:
    """The cache key of a side: its dataset's fingerprint (a snapshot's too)."""
    name, _ = compare.parse_spec(spec)
    return store.open_dataset(name).fingerprint


def dataset_colour(k: int) -> str:
    """One colour per compared dataset, never the modalities' blue and red."""
    from .figures import PALETTE
    return PALETTE[2 + k % (len(PALETTE) - 2)]


# ---------------------------------------------------------------- the comparison


@st.cache_resource(show_spinner=False, max_entries=8)
def _sides(specs: tuple, fingerprints: tuple) -> list:
    """Opened sides, held while cached (read-only; the fingerprints key them)."""
    return [compare.open_side(s) for s in specs]


def sides(specs: list[str]) -> list:
    specs = tuple(specs)
    return _sides(specs, tuple(fingerprint(s) for s in specs))


@st.cache_resource(show_spinner=False, max_entries=8)
def _comparison(specs: tuple, fingerprints: tuple, temperature, k: int):
    return compare.compare(_sides(specs, fingerprints), temperature=temperature, k=int(k))


def comparison(specs: list[str], temperature, k: int):
    """:func:`clipgeom.compare.compare` of the sides (cached per fingerprints and
    parameters); ``temperature`` None: each model's own."""
    if not 2 <= len(specs) <= MAX_SIDES:
        raise InputError(f"Pick 2 to {MAX_SIDES} datasets or training steps to compare "
                         f"(got {len(specs)}).")
    specs = tuple(specs)
    return _comparison(specs, tuple(fingerprint(s) for s in specs), temperature, int(k))


# ---------------------------------------------------------------- the property table


def spread(values) -> float | None:
    """How much a row's numbers differ, as a fold: max / min where all are
    positive (shell radii, ranks, skews), else 1 + (max - min) / max |v| (signed
    quantities: between 1 and 3). None where any is missing."""
    nums = [v for v in values if isinstance(v, (int, float)) and not isinstance(v, bool)
            and np.isfinite(v)]
    if len(nums) != len(values) or len(nums) < 2:
        return None
    lo, hi = min(nums), max(nums)
    if lo > 0:
        return hi / lo
    top = max(abs(v) for v in nums)
    return 1.0 if top == 0 else 1.0 + (hi - lo) / top


def outlier_column(values) -> int | None:
    """The column farthest from the median of the others (None: no numbers)."""
    if spread(values) is None:
        return None
    v = np.asarray(values, dtype=float)
    if np.all(v > 0):
        v = np.log(v)
    dev = [abs(v[j] - np.median(np.delete(v, j))) for j in range(len(v))]
    return int(np.argmax(dev))


def most_different(table: dict) -> tuple[str, int] | None:
    """(measure, column) of the cell that differs most: the row of the largest
    :func:`spread` (settings and grid argmins left out), its farthest column
    (for positive rows, farthest in log scale: a 0.004 radius among 14s)."""
    best, where = -1.0, None
    for key, values in table.items():
        if key in NOT_COMPARED:
            continue
        sp = spread(values)
        if sp is not None and sp > best:
            best, where = sp, (key, outlier_column(values))
    return where


# ---------------------------------------------------------------- per-side arrays


@dataclass
class SideView:
    """What the overlays draw of one side (plain arrays)."""

    label: str
    n: dict              # modality -> rows
    rows: dict           # modality -> rows kept (all, or a seeded sample)
    norms: dict          # modality -> raw ||v|| of the kept rows
    conformity: dict     # modality -> exact conformity of the kept rows (vs all rows)
    spectrum: dict       # modality -> normalised singular values (descending)
    sep_sorted: np.ndarray
    alpha: dict          # modality ("both"/"image"/"text") -> (alphas, total loss, argmin)
    effective_rank: dict


def _kept_rows(n: int, seed: int = 0) -> np.ndarray:
    if n <= MAX_ITEMS:
        return np.arange(n)
    return np.sort(np.random.default_rng(seed).choice(n, MAX_ITEMS, replace=False))


@st.cache_resource(show_spinner=False, max_entries=24)
def _side_view(spec: str, fp: str, temperature: float, _side, _rep: dict) -> SideView:
    rows, norms, conf, spec_, er = {}, {}, {}, {}, {}
    for mod in MODS:
        x = _side.image if mod == "image" else _side.text
        keep = _kept_rows(x.shape[0])
        block = np.asarray(x[keep], dtype=np.float64)
        rows[mod] = keep
        norms[mod] = np.linalg.norm(block, axis=1)
        conf[mod] = conformity.exact_conformity(block, reference=x) if len(keep) < x.shape[0] \
            else conformity.exact_conformity(x)
        spec_[mod] = measures.singular_spectrum(x)
        er[mod] = (_rep.get(mod) or {}).get("effective_rank")
    sep = np.sort(np.asarray((_rep.get("separability") or {}).get("per_feature") or [],
                             dtype=float))[::-1]
    alpha = {}
    for mod, sweep in (_rep.get("alpha_sweep") or {}).items():
        if isinstance(sweep, dict) and "alpha" in sweep:
            alpha[mod] = (np.asarray(sweep["alpha"], float), np.asarray(sweep["total"], float),
                          sweep.get("argmin"))
    return SideView(label=_side.label, n={m: (_side.image if m == "image" else _side.text
                                              ).shape[0] for m in MODS},
                    rows=rows, norms=norms, conformity=conf, spectrum=spec_,
                    sep_sorted=sep, alpha=alpha, effective_rank=er)


def side_views(specs: list[str], cmp) -> list[SideView]:
    out = []
    ss = sides(specs)
    for spec, side, rep, t in zip(specs, ss, cmp.reports, cmp.temperatures):
        out.append(_side_view(spec, fingerprint(spec), float(t), side, rep))
    return out


# ---------------------------------------------------------------- row-aligned pairs


@dataclass
class PairView:
    """Conformity of the same items under two spaces (row-aligned)."""

    a: str
    b: str
    modality: str
    rows_a: np.ndarray       # aligned rows (row k of a is row k of b's item)
    rows_b: np.ndarray
    conf_a: np.ndarray
    conf_b: np.ndarray
    rank_gap: np.ndarray     # percentile under a minus under b (+: typical under a only)


def zscore(v: np.ndarray) -> np.ndarray:
    """(v - mean) / std (a constant array -> zeros)."""
    v = np.asarray(v, dtype=float)
    sd = v.std()
    return (v - v.mean()) / sd if sd > 0 else np.zeros_like(v)


def _percentile(v: np.ndarray) -> np.ndarray:
    order = np.argsort(np.argsort(v, kind="stable"), kind="stable")
    return order / max(len(v) - 1, 1)


@st.cache_resource(show_spinner=False, max_entries=16)
def _pair_view(key: tuple, _a, _b, modality: str) -> PairView | None:
    ok, _, ra, rb = compare.alignment(_a, _b, modality)
    if not ok:
        return None
    xa = _a.image if modality == "image" else _a.text
    xb = _b.image if modality == "image" else _b.text
    ca = conformity.exact_conformity(xa)[np.asarray(ra)]
    cb = conformity.exact_conformity(xb)[np.asarray(rb)]
    return PairView(a=_a.label, b=_b.label, modality=modality, rows_a=np.asarray(ra),
                    rows_b=np.asarray(rb), conf_a=ca, conf_b=cb,
                    rank_gap=_percentile(ca) - _percentile(cb))


def pair_view(specs: list[str], i: int, j: int, modality: str) -> PairView | None:
    """None where the two sides' rows do not align in ``modality``."""
    ss = sides(specs)
    key = (specs[i], fingerprint(specs[i]), specs[j], fingerprint(specs[j]), modality)
    return _pair_view(key, ss[i], ss[j], modality)


def disagreements(pv: PairView, n: int = 8) -> tuple[np.ndarray, np.ndarray]:
    """Positions (into the aligned rows) of the ``n`` items most typical under
    a but atypical under b, and the reverse (by conformity percentile)."""
    order = np.argsort(pv.rank_gap, kind="stable")
    return order[::-1][:n], order[:n]


def scatter_positions(pv: PairView, seed: int = 0) -> np.ndarray:
    """Aligned positions drawn in the A-vs-B scatter (all, or a seeded sample
    that always keeps the most-disagreeing items)."""
    n = len(pv.rank_gap)
    if n <= SCATTER_POINTS:
        return np.arange(n)
    top, bottom = disagreements(pv, 50)
    pick = np.random.default_rng(seed).choice(n, SCATTER_POINTS, replace=False)
    return np.unique(np.concatenate([pick, top, bottom]))


def item_label(side, modality: str, row: int) -> str:
    """A caption (texts) or image id and first caption (images) for hover and galleries."""
    row = int(row)
    if modality == "text":
        if side.captions is not None and row < len(side.captions):
            return str(side.captions[row])
        return f"text row {row}"
    ident = side.image_ids[row] if side.image_ids is not None else f"image row {row}"
    first = None
    if side.captions is not None:
        hits = np.flatnonzero(np.asarray(side.pair_image_rows) == row)
        if hits.size:
            t = int(np.asarray(side.pair_text_rows)[hits[0]])
            first = side.captions[t] if t < len(side.captions) else None
    return f"{ident}: {first}" if first else str(ident)


def item_thumb(side, modality: str, row: int):
    """The image's thumbnail (for a caption: its image's), or None."""
    if side.is_snapshot:
        return None
    row = int(row)
    if modality == "text":
        hits = np.flatnonzero(np.asarray(side.pair_text_rows) == row)
        if not hits.size:
            return None
        row = int(np.asarray(side.pair_image_rows)[hits[0]])
    try:
        return side.ds.thumb_path(row)
    except InputError:
        return None


# ---------------------------------------------------------------- the gap picture


@st.cache_resource(show_spinner=False, max_entries=24)
def _gap_projection(spec: str, fp: str, _side) -> dict:
    """2-D PCA of one side's L2-normalised images and texts together (a seeded
    sample of each): the picture of Liang et al. 2022, Fig. 1."""
    rng = np.random.default_rng(0)
    parts = []
    for x in (_side.image, _side.text):
        keep = np.sort(rng.choice(x.shape[0], min(GAP_POINTS, x.shape[0]), replace=False))
        parts.append(measures.unit_rows(np.asarray(x[keep], np.float64)))
    z = np.vstack(parts)
    z = z - z.mean(0)
    _, _, vt = np.linalg.svd(z, full_matrices=False)
    xy = z @ vt[:2].T
    n_img = parts[0].shape[0]
    return {"image": xy[:n_img], "text": xy[n_img:]}


def gap_projection(spec: str, side) -> dict:
    return _gap_projection(spec, fingerprint(spec), side)
