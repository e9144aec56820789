"""Compare two or more embedding spaces side by side.

:func:`compare` takes datasets (stored or bundled names, opened
:class:`clipgeom.store.Dataset` objects, or training snapshots of one
dataset written ``"name@step"``) and returns one plain :class:`Comparison`:

* ``table``: the headline numbers of every side, from each one's report
  (``clipgeom.report/1``; a stored dataset's report is the one the dashboard
  keeps, :func:`clipgeom.report.stored_report`, so the work is shared), and
  ``differences`` from the first side;
* ``pairs``: for every pair of sides and each modality, the cross-space
  similarity of the same items in the two spaces (image vs image, text vs
  text): linear CKA (Kornblith et al., ICML 2019), mutual-kNN@k (Huh et al.,
  ICML 2024) and the Spearman correlation of the items' conformity
  (Double-Ellipsoid Def. 1), see :func:`clipgeom.measures.cross_space_similarity`.

Row alignment is decided from the data, never assumed (:func:`alignment`):
two sides align in a modality when they are the same dataset (equal
fingerprints), both training snapshots of one dataset, or their rows carry
the same identities in the same order: image ids for images; captions, or
the image ids captions are paired with, for texts; images align through
their first captions when those align. Ids the store generated itself
(``img00000``, ``txt00000``, ...) identify nothing and are not used. Where
rows do not align, the cross-space numbers are None and ``reason`` says why.

``python -m clipgeom compare A B [C ...] [--json]`` prints :func:`format_table`
or :meth:`Comparison.to_json` (schema ``clipgeom.compare/1``, a public
contract: keep its names, only add).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Callable, Optional, Sequence

import numpy as np

from . import measures, report
from ._atomic import replacing
from .errors import DatasetError, InputError

SCHEMA = "clipgeom.compare/1"
Progress = Optional[Callable[[str], None]]
MODALITIES = ("image", "text")

# (key, label): key is the report path of the value (dots separate levels)
MEASURES: tuple[tuple[str, str], ...] = (
    ("n_pairs", "pairs"),
    ("dim", "dimensions"),
    ("temperature", "temperature tau"),
    ("separability.n_above_1", "separable features (Sep > 1)"),
    ("separability.svm_top2.accuracy", "SVM on the top-2 features, accuracy"),
    ("image.shell_radius", "image shell radius"),
    ("image.shell_std", "image shell thickness (std)"),
    ("text.shell_radius", "text shell radius"),
    ("text.shell_std", "text shell thickness (std)"),
    ("image.mean_over_sigma", "image ||m||/||sigma||"),
    ("text.mean_over_sigma", "text ||m||/||sigma||"),
    ("modality_gap.centroid_distance", "gap: centroid distance (raw)"),
    ("modality_gap.normalized_centroid_distance", "gap: normalised centroid distance"),
    ("modality_gap.instance_gap", "gap: instance gap"),
    ("modality_gap.rmg", "gap: relative modality gap (RMG)"),
    ("modality_gap.mean_cosine", "cos(m_image, m_text)"),
    ("modality_gap.frechet.total", "Frechet distance"),
    ("modality_gap.frechet.mean_term", "Frechet mean term"),
    ("modality_gap.frechet.cov_term", "Frechet covariance term"),
    ("image.effective_rank", "image effective rank"),
    ("text.effective_rank", "text effective rank"),
    ("image.hubness.skew", "image hubness skew"),
    ("text.hubness.skew", "text hubness skew"),
    ("image.conformity.pearson", "image conformity Pearson"),
    ("image.conformity.a", "image conformity slope a"),
    ("image.conformity.theory_a", "image Prop. 1 slope (theory a)"),
    ("text.conformity.pearson", "text conformity Pearson"),
    ("text.conformity.a", "text conformity slope a"),
    ("text.conformity.theory_a", "text Prop. 1 slope (theory a)"),
    ("cross_modal.cka", "image-text CKA (paired)"),
    ("alpha_sweep.both.argmin", "alpha-shift argmin (both)"),
    ("alpha_sweep.image.argmin", "alpha-shift argmin (image)"),
    ("alpha_sweep.text.argmin", "alpha-shift argmin (text)"),
    ("loss.accuracy_i2t", "retrieval top-1 i2t"),
    ("loss.accuracy_t2i", "retrieval top-1 t2i"),
    ("logits.neg_sq_distance.accuracy_i2t", "retrieval top-1 i2t, -||x-y||^2 logits"),
    ("logits.neg_sq_distance.accuracy_t2i", "retrieval top-1 t2i, -||x-y||^2 logits"),
    ("conformity_kl.at_zero", "conformity KL(image||text) at alpha 0"),
)
LABELS = dict(MEASURES)


@dataclass(frozen=True)
class PairResult:
    """Cross-space similarity of one modality under two sides (None where the
    rows do not align)."""

    a: str
    b: str
    modality: str
    aligned: bool
    reason: str
    cka: Optional[float] = None
    mutual_knn_k: Optional[int] = None
    mutual_knn: Optional[float] = None
    conformity_spearman: Optional[float] = None
    n_used: Optional[int] = None       # aligned rows measured (mutual-kNN depends on it)
    note: str = ""

    def to_json(self) -> dict:
        return report._clean({
            "a": self.a, "b": self.b, "modality": self.modality, "aligned": self.aligned,
            "reason": self.reason, "cka": self.cka,
            "mutual_knn": {"k": self.mutual_knn_k, "value": self.mutual_knn},
            "conformity_spearman": self.conformity_spearman})


@dataclass
class Comparison:
    """The result of :func:`compare` (plain numbers; NaN where undefined)."""

    datasets: list[str]
    reports: list[dict]
    table: dict[str, list]               # measure key -> one value per side
    differences: dict[str, list]         # measure key -> value minus the first side's
    pairs: list[PairResult]
    temperatures: list[float]
    notes: list[str] = field(default_factory=list)

    labels = LABELS

    def to_json(self) -> dict:
        """The ``clipgeom.compare/1`` object (NaN -> null)."""
        return {"schema": SCHEMA, "datasets": list(self.datasets),
                "table": report._clean(self.table),
                "pairs": [p.to_json() for p in self.pairs]}

    def pair(self, a: str, b: str, modality: str) -> PairResult:
        for p in self.pairs:
            if p.modality == modality and {p.a, p.b} == {a, b}:
                return p
        raise KeyError((a, b, modality))


# --------------------------------------------------------------------------
# the sides


@dataclass(eq=False)
class Side:
    """One space to compare: a dataset's rows, or one training snapshot of it."""

    label: str
    ds: object                          # store.Dataset
    step: Optional[int]
    image: np.ndarray
    text: np.ndarray
    pair_image_rows: np.ndarray
    pair_text_rows: np.ndarray
    image_ids: Optional[list]           # None: unknown (snapshots)
    captions: Optional[list]
    text_image_ids: Optional[list]

    @property
    def is_snapshot(self) -> bool:
        return self.step is not None


def parse_spec(spec: str) -> tuple[str, Optional[int]]:
    """``"name"`` -> (name, None); ``"name@step"`` -> (name, step)."""
    if not isinstance(spec, str) or not spec:
        raise InputError(f"{spec!r} is not a dataset name (give a name, or name@step for a "
                         "training snapshot).")
    if "@" not in spec:
        return spec, None
    name, _, step = spec.rpartition("@")
    try:
        return name, int(step)
    except ValueError:
        raise InputError(f"{spec!r}: the part after '@' must be a training step (an integer, "
                         "e.g. demo@2000).") from None


def _ids(series) -> list:
    return [None if v is None else str(v) for v in series.tolist()]


def open_side(item, home=None) -> Side:
    """A :class:`Side` from a name, ``name@step``, an opened Dataset or a Side."""
    from . import store, timeline

    if isinstance(item, Side):
        return item
    if isinstance(item, str):
        name, step = parse_spec(item)
        ds = store.open_dataset(name, home=home)
    elif hasattr(item, "image_emb") and hasattr(item, "manifest"):
        ds, step = item, None
    else:
        raise InputError(f"cannot compare {item!r}: give a dataset name, name@step or a "
                         "store.Dataset.")
    if step is not None:
        if not timeline.has_snapshots(ds):
            raise DatasetError(f"dataset {ds.name!r} records no training snapshots; "
                               f"'{ds.name}@{step}' needs them (the bundled demo has them).")
        snap = timeline.load_snapshot(ds, step)
        rows = np.arange(snap.image.shape[0])
        caps = timeline.snapshot_captions(ds)
        if caps is not None and len(caps) != len(rows):
            caps = None
        return Side(label=f"{ds.name}@{step}", ds=ds, step=step, image=snap.image,
                    text=snap.text, pair_image_rows=rows, pair_text_rows=rows.copy(),
                    image_ids=None, captions=caps, text_image_ids=None)
    ii, tt = ds.pairs()
    return Side(label=ds.name, ds=ds, step=None, image=ds.image_emb, text=ds.text_emb,
                pair_image_rows=ii, pair_text_rows=tt,
                image_ids=_ids(ds.images["image_id"]), captions=_ids(ds.texts["caption"]),
                text_image_ids=_ids(ds.texts["image_id"]))


# --------------------------------------------------------------------------
# reports


def _temperature(side: Side, temperature: Optional[float]) -> float:
    return report.default_temperature(side.ds) if temperature is None else float(temperature)


def snapshot_report(ds, step: int, *, temperature: float, max_pairs: int =
                    report.DEFAULT_MAX_PAIRS, seed: int = 0, progress: Progress = None) -> dict:
    """:func:`clipgeom.report.build_report` of one training snapshot (row i of
    each modality is pair i), kept as JSON in the dataset's cache folder like
    :func:`clipgeom.report.stored_report` (keyed by fingerprint, step and
    parameters)."""
    from . import timeline
    from .store.files import is_normalized

    params = {"snapshot_step": int(step), "temperature": float(temperature),
              "max_pairs": int(max_pairs), "seed": int(seed)}
    name = report._cache_name(ds, params)
    label = f"{ds.name}@{int(step)}"
    for folder in (ds.shipped_dir("cache"), ds.cache_dir):
        if folder is not None and (folder / name).is_file():
            try:
                rep = json.loads((folder / name).read_text(encoding="utf-8"))
            except (OSError, ValueError):
                continue
            if report._looks_like_report(rep):
                rep["dataset"] = label
                return rep
    snap = timeline.load_snapshot(ds, step)
    rows = np.arange(snap.image.shape[0])
    rep = report.build_report(snap.image, snap.text, rows, rows, dataset=label,
                              temperature=temperature, max_pairs=max_pairs, seed=seed,
                              normalized_input={"image": is_normalized(snap.image),
                                                "text": is_normalized(snap.text)},
                              progress=progress)
    try:
        with replacing(ds.cache_dir / name) as tmp:
            tmp.write_text(json.dumps(rep), encoding="utf-8")
    except (OSError, DatasetError):
        pass
    return rep


def side_report(side: Side, temperature: float, max_pairs: int, seed: int,
                progress: Progress = None) -> dict:
    if side.is_snapshot:
        return snapshot_report(side.ds, side.step, temperature=temperature,
                               max_pairs=max_pairs, seed=seed, progress=progress)
    return report.stored_report(side.ds, temperature=temperature, max_pairs=max_pairs,
                                seed=seed, progress=progress)


def lookup(rep: dict, key: str):
    """The value at a dotted report path, or None where any level is missing."""
    cur = rep
    for part in key.split("."):
        if not isinstance(cur, dict) or part not in cur:
            return None
        cur = cur[part]
    return cur if isinstance(cur, (int, float)) or cur is None else None


# --------------------------------------------------------------------------
# row alignment


def _generated(ids: Sequence, prefix: str) -> bool:
    """The store's own ids for rows given none (``img00000``, ``txt00000``, ...)."""
    return len(ids) > 0 and all(v == f"{prefix}{i:05d}" for i, v in enumerate(ids))


def _same_sequence(a, b, what: str) -> tuple[bool, str]:
    if a is None or b is None:
        return False, f"no {what} recorded"
    if len(a) != len(b):
        return False, f"different numbers of {what} ({len(a)} vs {len(b)})"
    for i, (x, y) in enumerate(zip(a, b)):
        if x != y:
            return False, f"{what} differ at row {i} ({_short(x)} vs {_short(y)})"
    return True, f"same {what} in the same order"


def _short(v) -> str:
    s = repr(v)
    return s if len(s) <= 40 else s[:37] + "...'"


def _informative(ids, prefix: Optional[str]) -> tuple[bool, str]:
    if ids is None:
        return False, ""
    if all(v in (None, "") for v in ids):
        return False, "empty"
    if prefix is not None and _generated(ids, prefix):
        return False, (f"generated by the store ({prefix}00000, {prefix}00001, ...), which "
                       "identify no item")
    return True, ""


def _ids_match(a, b, what: str, prefix: Optional[str]) -> tuple[bool, str]:
    ok, why = _same_sequence(a, b, what)
    if not ok:
        return False, why
    inf, why = _informative(a, prefix)
    if not inf:
        return False, f"the {what} are {why}" if why else f"no {what} recorded"
    return True, why or f"same {what} in the same order"


def _text_alignment(a: Side, b: Side) -> tuple[bool, str]:
    ok_c, why_c = _ids_match(a.captions, b.captions, "captions", None)
    if ok_c:
        return True, f"same captions in the same order ({len(a.captions)} rows)"
    if _informative(a.captions, None)[0] and _informative(b.captions, None)[0]:
        return False, why_c          # two real caption lists that differ: other texts
    ok_p, why_p = _ids_match(a.text_image_ids, b.text_image_ids,
                             "image ids the captions belong to", None)
    if ok_p:
        inf_a, _ = _informative(a.image_ids, "img")
        inf_b, _ = _informative(b.image_ids, "img")
        if inf_a and inf_b:
            return True, (f"captions paired with the same image ids in the same order "
                          f"({len(a.text_image_ids)} rows)")
        why_p = "the image ids the captions belong to are generated by the store"
    return False, _why(why_c, why_p)


def _why(*clauses: str) -> str:
    """Join the reasons rows do not align, leaving out "no ... recorded" where a
    more telling clause exists."""
    told = [c for c in clauses if c and not c.startswith("no ")]
    return "; ".join(dict.fromkeys(told or [c for c in clauses if c]))


def alignment(a: Side, b: Side, modality: str
              ) -> tuple[bool, str, Optional[np.ndarray], Optional[np.ndarray]]:
    """(aligned, reason, rows of ``a``, rows of ``b``) for one modality: row
    ``rows_a[k]`` of ``a`` is the same item as row ``rows_b[k]`` of ``b``.

    Decided from the data only (see the module docstring); ``reason`` says on
    what grounds, or why not."""
    if modality not in MODALITIES:
        raise InputError(f"modality must be 'image' or 'text', got {modality!r}.")
    xa = a.image if modality == "image" else a.text
    xb = b.image if modality == "image" else b.text
    same_ds = a.ds.fingerprint == b.ds.fingerprint
    if a.is_snapshot and b.is_snapshot and same_ds:
        rows = np.arange(xa.shape[0])
        return True, (f"training snapshots of one dataset ({a.ds.name}): the same "
                      f"{xa.shape[0]} held-out pairs at every step"), rows, rows
    if not a.is_snapshot and not b.is_snapshot and same_ds:
        rows = np.arange(xa.shape[0])
        return True, "the same dataset (equal fingerprints: same arrays and tables)", rows, rows
    if a.is_snapshot != b.is_snapshot:
        snap, other = (a, b) if a.is_snapshot else (b, a)
        prefix = (f"{snap.label} holds the training run's {snap.image.shape[0]} held-out "
                  f"pairs, {other.label} its own {other.image.shape[0]} images and "
                  f"{other.text.shape[0]} captions: ")
    else:
        prefix = ""
    if xa.shape[0] != xb.shape[0]:
        what = "images" if modality == "image" else "captions"
        return False, f"{prefix}different numbers of {what} ({xa.shape[0]} vs " \
                      f"{xb.shape[0]})", None, None
    if modality == "text":
        ok, why = _text_alignment(a, b)
        if ok:
            rows = np.arange(xa.shape[0])
            return True, why, rows, rows
        return False, prefix + why, None, None
    ok, why = _ids_match(a.image_ids, b.image_ids, "image ids", "img")
    if ok:
        rows = np.arange(xa.shape[0])
        return True, f"{why} ({xa.shape[0]} rows)", rows, rows
    ok_t, why_t = _text_alignment(a, b)
    if ok_t:
        if np.array_equal(a.pair_text_rows, b.pair_text_rows) and len(a.pair_text_rows):
            return True, (f"images paired with the same captions ({why_t}; "
                          f"{len(a.pair_text_rows)} images by their first caption)"), \
                a.pair_image_rows, b.pair_image_rows
        why_t = "the captions align but their images are paired differently"
    return False, prefix + _why(why, why_t), None, None


def _sample(n: int, cap: int, seed: int) -> np.ndarray:
    """The seeded row sample of :mod:`clipgeom.measures` (all rows up to ``cap``)."""
    if n <= cap:
        return np.arange(n)
    return np.sort(np.random.default_rng(seed).choice(n, cap, replace=False))


def cross_space(a: Side, b: Side, modality: str, *, k: int = measures.DEFAULT_K,
                max_rows: int = measures.CROSS_SAMPLE, seed: int = 0) -> PairResult:
    """Linear CKA, mutual-kNN@k and conformity Spearman of one modality under
    two sides, on the aligned rows (a seeded sample of at most ``max_rows``,
    the same rows on both sides); None with the reason where rows do not align."""
    ok, reason, ra, rb = alignment(a, b, modality)
    if not ok:
        return PairResult(a=a.label, b=b.label, modality=modality, aligned=False, reason=reason)
    if len(ra) < 3:
        return PairResult(a=a.label, b=b.label, modality=modality, aligned=True,
                          reason=f"{reason}; only {len(ra)} aligned rows, the cross-space "
                                 "measures need 3")
    xa = a.image if modality == "image" else a.text
    xb = b.image if modality == "image" else b.text
    pick = _sample(len(ra), max_rows, seed)
    ya = np.asarray(xa[np.asarray(ra)[pick]], dtype=np.float32)
    yb = np.asarray(xb[np.asarray(rb)[pick]], dtype=np.float32)
    cs = measures.cross_space_similarity(ya, yb, k, max_rows=len(pick), seed=seed)
    notes = []
    if len(pick) < len(ra):
        notes.append(f"seeded sample (seed {seed}) of {len(pick)} of {len(ra)} aligned rows")
    if cs.k != k:
        notes.append(f"k lowered from {k} to {cs.k}")
    notes.append(measures.MUTUAL_KNN_NOTE)
    return PairResult(a=a.label, b=b.label, modality=modality, aligned=True, reason=reason,
                      cka=cs.cka, mutual_knn_k=cs.k, mutual_knn=cs.mutual_knn,
                      conformity_spearman=cs.conformity_spearman, n_used=cs.n_used,
                      note="; ".join(notes))


# --------------------------------------------------------------------------
# compare


def _difference(v, v0):
    if isinstance(v, (int, float)) and isinstance(v0, (int, float)) \
            and not isinstance(v, bool) and not isinstance(v0, bool):
        return v - v0
    return None


def compare(datasets, *, temperature: Optional[float] = None,
            max_pairs: int = report.DEFAULT_MAX_PAIRS, k: int = measures.DEFAULT_K,
            seed: int = 0, progress: Progress = None, home=None) -> Comparison:
    """Compare two or more datasets (names, ``name@step`` snapshots, opened
    Datasets or :class:`Side` objects) side by side.

    ``temperature``: None uses each model's own learned τ
    (:func:`clipgeom.report.default_temperature`; a snapshot takes its
    dataset's); a number uses it for every side. ``max_pairs``: pairs in each
    report's loss batch and aligned rows in each cross-space sample (seeded
    by ``seed``). ``k``: neighbours for mutual-kNN.

    Each side's report is the stored one (:func:`clipgeom.report.stored_report`),
    computed once per dataset and parameters and shared with the dashboard;
    a snapshot's is kept the same way (:func:`snapshot_report`)."""
    items = list(datasets) if not isinstance(datasets, (str, bytes)) else [datasets]
    if len(items) < 2:
        raise InputError(f"compare needs at least two datasets (got {len(items)}).")
    if int(max_pairs) < 2:
        raise InputError(f"max_pairs must be at least 2 (got {max_pairs}).")
    if int(k) < 1:
        raise InputError(f"k must be at least 1 (got {k}).")
    say = progress or (lambda msg: None)
    sides = [open_side(it, home=home) for it in items]
    try:
        return _compare(sides, temperature, int(max_pairs), int(k), int(seed), say)
    finally:
        for s, it in zip(sides, items):
            if isinstance(it, str):          # opened here: release the version
                s.ds.close()


def _compare(sides: list[Side], temperature, max_pairs: int, k: int, seed: int,
             say: Callable[[str], None]) -> Comparison:
    temps = [_temperature(s, temperature) for s in sides]
    notes = []
    if any(s.is_snapshot for s in sides) and temperature is None:
        notes.append("training snapshots are measured at their dataset's final learned "
                     "temperature (the temperature at each step is not recorded)")
    reports = []
    for s, t in zip(sides, temps):
        say(f"report of {s.label} (tau {t:g})")
        reports.append(side_report(s, t, max_pairs, seed,
                                   progress=(lambda m, lab=s.label: say(f"{lab}: {m}"))))
    table = {key: [lookup(r, key) for r in reports] for key, _ in MEASURES}
    differences = {key: [_difference(v, vals[0]) for v in vals] for key, vals in table.items()}
    pairs = []
    for i in range(len(sides)):
        for j in range(i + 1, len(sides)):
            for mod in MODALITIES:
                say(f"cross-space {mod}: {sides[i].label} vs {sides[j].label}")
                pairs.append(cross_space(sides[i], sides[j], mod, k=k, max_rows=max_pairs,
                                         seed=seed))
    if any(s.ds.normalized_input.get("image") or s.ds.normalized_input.get("text")
           for s in sides if not s.is_snapshot):
        notes.append("some inputs arrived L2-normalised: their shell radius, thickness and "
                     "||m||/||sigma|| describe the unit sphere, not raw norms")
    return Comparison(datasets=[s.label for s in sides], reports=reports, table=table,
                      differences=differences, pairs=pairs, temperatures=temps, notes=notes)


# --------------------------------------------------------------------------
# the readable table


def _fmt(v) -> str:
    if v is None or (isinstance(v, float) and not np.isfinite(v)):
        return "n/a"
    if isinstance(v, bool):
        return str(v)
    if isinstance(v, int):
        return str(v)
    return format(v, ".4g")


def format_table(cmp: Comparison) -> str:
    """A fixed-width text table of the measures (one column per side, then
    the spread max - min) and the cross-space pairs."""
    names = cmp.datasets
    lw = max(len(lab) for _, lab in MEASURES) + 2
    cw = [max(len(n), 9) + 2 for n in names]
    spread_head = "B - A" if len(names) == 2 else "max - min"
    lines = [f"compare: {', '.join(names)}", "",
             "measure".ljust(lw) + "".join(n.rjust(w) for n, w in zip(names, cw))
             + spread_head.rjust(11)]
    for key, label in MEASURES:
        vals = cmp.table[key]
        nums = [v for v in vals if isinstance(v, (int, float)) and v is not None
                and np.isfinite(v)]
        if len(names) == 2:
            spread = cmp.differences[key][1]
        else:
            spread = (max(nums) - min(nums)) if len(nums) == len(vals) and nums else None
        lines.append(label.ljust(lw) + "".join(_fmt(v).rjust(w) for v, w in zip(vals, cw))
                     + _fmt(spread).rjust(11))
    lines += ["", "cross-space similarity of the same items (row-aligned pairs):"]
    for p in cmp.pairs:
        head = f"  {p.a} vs {p.b}, {p.modality}: "
        if p.cka is None:
            state = "aligned" if p.aligned else "not aligned"
            lines.append(head + f"{state}: {p.reason}")
        else:
            lines.append(head + f"CKA {_fmt(p.cka)}, mutual-kNN@{p.mutual_knn_k} "
                         f"{_fmt(p.mutual_knn)}, conformity Spearman "
                         f"{_fmt(p.conformity_spearman)} on {p.n_used} rows ({p.reason})")
    for n in cmp.notes:
        lines.append(f"note: {n}")
    return "\n".join(lines)
