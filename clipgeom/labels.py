"""Label-based evaluations: zero-shot and linear-probe accuracy.

Tyshchuk et al., "On Isotropy of Multimodal Embeddings", Sec. 3.1.4 and
4.4-4.5 (Tables 3-5).
"""

from __future__ import annotations

import numpy as np

from . import validate
from .errors import InputError


def _labels(labels, n: int, name: str = "labels") -> np.ndarray:
    arr = np.asarray(labels)
    if arr.ndim != 1 or arr.shape[0] != n:
        raise InputError(f"{name}: expected one label per row ({n}), got shape {arr.shape}.")
    if np.issubdtype(arr.dtype, np.integer):
        return arr.astype(np.int64)
    if np.issubdtype(arr.dtype, np.floating) and np.isfinite(arr).all() \
            and np.all(arr == np.round(arr)):
        return arr.astype(np.int64)
    raise InputError(f"{name}: expected whole-number class ids, got dtype {arr.dtype}.")


def zero_shot_accuracy(image, class_text, labels) -> float:
    """Zero-shot classification accuracy by cosine (isotropy paper Sec. 3.1.4, 4.4, Table 3).

    Each image is assigned the class whose text embedding (row c of
    ``class_text`` is class c) has the highest cosine with it; ties go to the
    lowest class id. ``labels`` are integer class ids in 0..C-1. Returns the
    fraction of images classified correctly.
    """
    img = validate.embeddings(image, "image embeddings", min_rows=1, dtype=np.float64)
    cls = validate.embeddings(class_text, "class text embeddings", min_rows=1, dtype=np.float64)
    validate.same_width(img, cls, "image embeddings", "class text embeddings")
    y = _labels(labels, img.shape[0])
    c = cls.shape[0]
    bad = np.flatnonzero((y < 0) | (y >= c))
    if bad.size:
        raise InputError(
            f"labels: class id {int(y[bad[0]])} at row {int(bad[0])} is outside 0..{c - 1} "
            f"(there are {c} class text embeddings, row c = class c)."
        )
    img /= np.linalg.norm(img, axis=1, keepdims=True)
    cls /= np.linalg.norm(cls, axis=1, keepdims=True)
    pred = np.argmax(img @ cls.T, axis=1)
    return float(np.mean(pred == y))


def linear_probe_accuracy(x, labels, *, test_fraction: float = 0.25, seed: int = 0) -> float:
    """Held-out accuracy of a logistic-regression probe (isotropy paper Sec. 4.5, Table 5).

    ``sklearn.linear_model.LogisticRegression`` (L-BFGS, max_iter = 1000,
    default L2 regularisation C = 1) is fitted on the raw rows of a seeded,
    stratified split (``train_test_split``, ``test_fraction`` held out) and
    scored on the held-out rows. Needs at least two classes and enough rows
    of each class for both splits.
    """
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import train_test_split

    x = validate.embeddings(x, "embeddings", allow_zero=True, dtype=np.float64)
    y = _labels(labels, x.shape[0])
    if not 0.0 < float(test_fraction) < 1.0:
        raise InputError(f"test_fraction must be strictly between 0 and 1, got {test_fraction}.")
    classes, counts = np.unique(y, return_counts=True)
    if classes.size < 2:
        raise InputError("linear probe needs at least two different labels.")
    if counts.min() < 2:
        rare = classes[counts < 2]
        raise InputError(
            f"linear probe: class {int(rare[0])} has only one row; every class needs at "
            "least two (one to train, one to test). Remove rare classes or add rows."
        )
    try:
        x_tr, x_te, y_tr, y_te = train_test_split(
            x, y, test_size=float(test_fraction), random_state=seed, stratify=y)
    except ValueError as exc:
        raise InputError(
            f"linear probe: cannot make a stratified split with test_fraction="
            f"{test_fraction} of {x.shape[0]} rows over {classes.size} classes ({exc}). "
            "Use a test_fraction that leaves at least one row per class in each split."
        ) from None
    clf = LogisticRegression(solver="lbfgs", max_iter=1000)
    clf.fit(x_tr, y_tr)
    return float(clf.score(x_te, y_te))
