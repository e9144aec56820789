"""A selection of items (image rows and caption rows of one dataset): how it
differs from the rest, and saving it as a dataset of its own.

Pure functions over arrays and tables; the dashboard's linked scatters call
them with the rows a user boxed or lassoed.
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass

import numpy as np
import pandas as pd

from .errors import InputError

_WORD = re.compile(r"[a-z][a-z'-]+")
# Words too common to say anything about a selection.
STOPWORDS = frozenset("a an the of on in at to and with is are by for next from its".split())


@dataclass(frozen=True)
class Contrast:
    """One measure inside the selection vs outside it."""

    measure: str
    selected: float
    rest: float

    @property
    def difference(self) -> float:
        return self.selected - self.rest


def clean_rows(rows, n: int, what: str) -> np.ndarray:
    """Sorted unique int rows in 0..n-1; InputError naming the first bad row."""
    r = np.asarray(list(rows) if not isinstance(rows, np.ndarray) else rows)
    if r.size == 0:
        return np.zeros(0, dtype=np.int64)
    if not np.issubdtype(r.dtype, np.integer):
        raise InputError(f"{what} rows must be integers, got {r.dtype}.")
    bad = r[(r < 0) | (r >= n)]
    if bad.size:
        raise InputError(f"{what} row {int(bad[0])} is out of range (0..{n - 1}).")
    return np.unique(r.astype(np.int64))


def contrast(values: np.ndarray, rows: np.ndarray, measure: str) -> Contrast:
    """Mean of ``values`` over ``rows`` vs over all other rows (nan when one side is empty)."""
    v = np.asarray(values, dtype=np.float64)
    mask = np.zeros(v.shape[0], dtype=bool)
    mask[rows] = True
    sel = float(v[mask].mean()) if mask.any() else float("nan")
    rest = float(v[~mask].mean()) if (~mask).any() else float("nan")
    return Contrast(measure, sel, rest)


def over_represented(tokens_per_row: list[list[str]], rows: np.ndarray, *, top: int = 10,
                     min_count: int = 2) -> pd.DataFrame:
    """Tokens (labels, concepts, caption words) most over-represented in the
    selection: the share of selected rows containing the token vs the share of
    the other rows, ranked by the smoothed ratio (x + 1) / (y + 1) of the counts
    scaled to equal group sizes. Columns: token, selected (count), rest (count),
    selected_share, rest_share, ratio."""
    n = len(tokens_per_row)
    mask = np.zeros(n, dtype=bool)
    mask[rows] = True
    n_sel, n_rest = int(mask.sum()), int(n - mask.sum())
    cols = ["token", "selected", "rest", "selected_share", "rest_share", "ratio"]
    if n_sel == 0:
        return pd.DataFrame(columns=cols)
    sel, rest = Counter(), Counter()
    for r, toks in enumerate(tokens_per_row):
        (sel if mask[r] else rest).update(set(toks))
    out = []
    for tok, c in sel.items():
        if c < min(min_count, n_sel):
            continue
        o = rest.get(tok, 0)
        ps, pr = c / n_sel, (o / n_rest if n_rest else 0.0)
        ratio = (ps * 100 + 1) / (pr * 100 + 1)
        out.append((tok, c, o, ps, pr, ratio))
    df = pd.DataFrame(out, columns=cols)
    return df.sort_values(["ratio", "selected"], ascending=False).head(top).reset_index(drop=True)


def caption_words(captions) -> list[list[str]]:
    """Lower-case words of each caption, stop words left out."""
    return [[w for w in _WORD.findall(str(c).lower()) if w not in STOPWORDS] for c in captions]


def subset_tables(images: pd.DataFrame, texts: pd.DataFrame, image_rows, text_rows
                  ) -> tuple[np.ndarray, np.ndarray]:
    """(image rows, text rows) of a subset closed under pairing: the selected
    images with all their captions, and the selected captions with their images."""
    irows = clean_rows(image_rows, len(images), "image")
    trows = clean_rows(text_rows, len(texts), "text")
    ids = set(images["image_id"].iloc[irows])
    t_img = texts["image_id"]
    trows = np.union1d(trows, np.flatnonzero(t_img.isin(ids).to_numpy()))
    linked = set(t_img.iloc[trows].dropna())
    irows = np.union1d(irows, np.flatnonzero(images["image_id"].isin(linked).to_numpy()))
    return irows.astype(np.int64), trows.astype(np.int64)


def save_subset(ds, name: str, image_rows, text_rows, *, home=None):
    """Write the selected items of dataset ``ds`` (closed under pairing) as a
    new dataset ``name`` through the store's atomic create; returns it opened."""
    from . import store

    irows, trows = subset_tables(ds.images, ds.texts, image_rows, text_rows)
    if irows.size == 0 or trows.size == 0:
        raise InputError("A saved subset needs at least one image and one caption; the "
                         "selection has "
                         f"{irows.size} image(s) and {trows.size} caption(s).")
    images = ds.images.iloc[irows].reset_index(drop=True)
    texts = ds.texts.iloc[trows].reset_index(drop=True)
    thumbs = ds.thumbs_dir
    return store.create_dataset(
        name, np.asarray(ds.image_emb[irows]), np.asarray(ds.text_emb[trows]), images, texts,
        model=ds.model, home=home, thumbs_dir=thumbs if thumbs.is_dir() else None,
        source={"kind": "subset", "of": ds.name, "of_fingerprint": ds.fingerprint,
                "image_rows": int(irows.size), "text_rows": int(trows.size)})
