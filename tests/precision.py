"""The precisions the README states for the report, and tolerances derived
from them for the quantities whose value can jump: ranks and argmaxes of
float32 numbers.

A float computed with float32 products (isotropy's log Z, the whitened
likelihood's well-conditioned directions, the torch logits of the loss and
alpha sweeps) changes with the CPU's kernel family (AVX2 / AVX-512 / NEON,
OpenBLAS's core type) and thread count, within its stated precision. A
continuous quantity then moves by less than that precision; a discrete one
(a retrieval accuracy, an argmin over a grid, a Spearman of float32 values)
moves only where items are nearer than that precision, and then by a jump.
The tolerances here count those near items in an independent float64
computation, so a comparison is exactly as tight as the data allow: on data
without near-ties it is exact.
"""

from __future__ import annotations

import json
import os
import platform
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy.stats import rankdata, spearmanr

import brute

F64_REL = 1e-9        # one-pass float64 statistics (README, "Precision")
F32_REL = 1e-7        # sections of float32 products, each total or mean
F32_ROW_REL = 1e-6    # one row's whitened squared norm / log-likelihood
F32_SPLIT_REL = 1e-6  # the loss of the correct / misclassified pairs: a mean
                      # over a small group keeps each pair's float32 error
F32_PATHS = (".isotropy.", ".likelihood.", ".loss.", ".logits.", ".alpha_sweep.")


# --------------------------------------------------------------------------
# Where a stored value was recorded, and where it is compared


def machine() -> dict:
    """The facts that decide float32 kernels: CPU, its vector extensions,
    library versions, thread settings."""
    import numpy
    import torch
    flags = set()
    model = platform.processor() or platform.machine()
    try:
        text = Path("/proc/cpuinfo").read_text()
        m = re.search(r"^model name\s*:\s*(.+)$", text, re.M)
        model = m.group(1).strip() if m else model
        f = re.search(r"^(?:flags|Features)\s*:\s*(.+)$", text, re.M)
        flags = set(f.group(1).split()) if f else set()
    except OSError:
        pass
    family = ("AVX-512" if "avx512f" in flags else "AVX2" if "avx2" in flags
              else "NEON" if "asimd" in flags else platform.machine())
    return {"cpu": model, "arch": platform.machine(), "vector": family,
            "numpy": numpy.__version__, "torch": torch.__version__,
            "OPENBLAS_CORETYPE": os.environ.get("OPENBLAS_CORETYPE", ""),
            "OPENBLAS_NUM_THREADS": os.environ.get("OPENBLAS_NUM_THREADS", ""),
            "CLIPGEOM_WORKERS": os.environ.get("CLIPGEOM_WORKERS", "")}


def load_golden(path: Path) -> dict:
    gold = json.loads(Path(path).read_text())
    assert "recorded" in gold, f"{path} does not say where it was recorded"
    return gold


# --------------------------------------------------------------------------
# Spearman of float32 values


def spearman_tolerance(x64, y, rel: float = F32_ROW_REL) -> float:
    """Largest change of Spearman(x', y) from Spearman(x64, y) over every x'
    with |x'_i - x64_i| <= rel |x64_i| (y exact).

    Rows whose x64 lie within the two rows' allowance of each other form
    clusters (consecutive in sorted order); the order between clusters cannot
    change. Inside a cluster of g rows the ranks permute (or tie) among the
    cluster's own g ranks, so each rank moves by at most g - 1, the
    cross-product moves by at most (g - 1) sum |rank_y - cluster mean|, and
    the rank variance by at most (g^3 - g) / 12. Exact ties (duplicate items)
    are clusters too.
    """
    x64 = np.asarray(x64, np.float64)
    ry = rankdata(np.asarray(y, np.float64))
    ry -= ry.mean()
    rx = rankdata(x64)
    rx -= rx.mean()
    order = np.argsort(x64, kind="stable")
    xs = x64[order]
    allow = rel * np.abs(xs)
    near = np.diff(xs) <= allow[:-1] + allow[1:]
    starts = np.flatnonzero(np.r_[True, ~near])
    stops = np.r_[starts[1:], len(xs)]
    d_num = d_var = 0.0
    for a, b in zip(starts, stops):
        g = b - a
        if g > 1:
            r = ry[order[a:b]]
            d_num += (g - 1) * np.abs(r - r.mean()).sum()
            d_var += (g ** 3 - g) / 12.0
    num, vx, vy = float(rx @ ry), float(rx @ rx), float(ry @ ry)
    rho = num / np.sqrt(vx * vy)
    bounds = [(num + s * d_num) / np.sqrt(max(vx + t * d_var, 1e-300) * vy)
              for s in (-1, 1) for t in (-1, 1)]
    return float(max(abs(b - rho) for b in bounds)) + 1e-12


def whitened_log_likelihood(x) -> np.ndarray:
    """Betser, Levi & Gilboa's whitened log-likelihood in plain float64
    (population covariance; the report's ridge 1e-6 mean(lambda) when the
    covariance is rank-deficient, rank at 1e-10 of the largest eigenvalue)."""
    x = np.asarray(x, np.float64)
    c = x - x.mean(0)
    lam, vec = np.linalg.eigh(c.T @ c / len(x))
    lam = np.maximum(lam, 0.0)
    if np.sum(lam > lam.max() * 1e-10) < lam.size:
        lam = lam + 1e-6 * lam.mean()
    z = c @ (vec / np.sqrt(lam))
    return -0.5 * (x.shape[1] * np.log(2 * np.pi) + np.einsum("ij,ij->i", z, z))


# --------------------------------------------------------------------------
# Retrieval and argmin over float32 logits


@dataclass
class Retrieval:
    """Which pairs are retrieved in float64, and which are within float32's
    reach of the tie threshold (clipgeom.loss.TIE_REL) and may go either way."""
    i2t: np.ndarray
    t2i: np.ndarray
    unsure_i2t: np.ndarray
    unsure_t2i: np.ndarray
    per_pair: np.ndarray

    def accuracy_tolerance(self, which: str) -> float:
        return float(getattr(self, f"unsure_{which}").mean()) + 1e-12

    def split_tolerance(self, value_correct: bool) -> float:
        """How far the mean loss of the correct (or misclassified) pairs can
        move when the unsure pairs change sides."""
        unsure = self.unsure_i2t | self.unsure_t2i
        if not unsure.any():
            return 0.0
        group = (self.i2t & self.t2i) if value_correct else ~(self.i2t & self.t2i)
        sure = group & ~unsure
        if not sure.any():
            return np.inf
        mean = self.per_pair[sure].mean()
        return float(unsure.sum() * np.abs(self.per_pair[unsure] - mean).max()
                     / sure.sum())


def retrieval(v, t, tau, ai=0.0, at=0.0, kind="cosine") -> Retrieval:
    from clipgeom.loss import TIE_REL
    from scipy.special import logsumexp

    L = brute.logits(v, t, tau, ai, at, kind)
    own = np.diag(L).copy()
    off = L.copy()
    np.fill_diagonal(off, -np.inf)
    gap_r, gap_c = off.max(1) - own, off.max(0) - own
    tie = TIE_REL * max(np.abs(own).max(), np.abs(np.maximum(off.max(1), own)).max())
    per = -own + 0.5 * logsumexp(L, axis=1) + 0.5 * logsumexp(L, axis=0)
    # float32 logits are off by far less than tie / 2 (~100 ulps); a gap
    # inside (tie / 2, 2 tie) may fall on either side of the threshold
    unsure = lambda g: (g > tie / 2) & (g < 2 * tie)  # noqa: E731
    return Retrieval(i2t=gap_r <= tie, t2i=gap_c <= tie, unsure_i2t=unsure(gap_r),
                     unsure_t2i=unsure(gap_c), per_pair=per)


def argmin_choices(totals, alphas, rel: float = F32_REL) -> set[float]:
    """Grid points whose total is within float32's precision of the minimum."""
    totals = np.asarray(totals, np.float64)
    lo = totals.min()
    return {float(a) for a, v in zip(alphas, totals) if v - lo <= 2 * rel * abs(lo)}


# --------------------------------------------------------------------------
# A report against a stored one


def derived_truths(rep: dict, pairs: tuple, arrays: dict, temperature: float) -> dict:
    """{path: (float64 truth, tolerance, why)} for every discrete
    float32-derived leaf of a report: the value the leaf must have in plain
    float64 arithmetic, and how far float32 can move it on these rows (a set
    of allowed values for an argmin). ``pairs`` are the (image, text) rows of
    the report's pair sample."""
    out = {}
    for mod, x in arrays.items():
        if rep[mod].get("likelihood"):
            ll = whitened_log_likelihood(x)
            conf = brute.conformity(x)
            out[f".{mod}.likelihood.conformity_spearman"] = (
                float(spearmanr(ll, conf)[0]), spearman_tolerance(ll, conf),
                "Spearman of float32 log-likelihoods: near-tied rows may swap ranks")
    if rep.get("loss") is None:
        return out
    vi, vt = pairs

    def add(prefix, r: Retrieval, split: bool, index: str = ""):
        for which in ("i2t", "t2i"):
            out[f"{prefix}.accuracy_{which}{index}"] = (
                float(getattr(r, which).mean()), r.accuracy_tolerance(which),
                f"{int(getattr(r, 'unsure_' + which).sum())} pairs at the tie threshold")
        if split:
            correct = r.i2t & r.t2i
            for key, group in (("loss_correct", correct), ("loss_misclassified", ~correct)):
                truth = float(r.per_pair[group].mean()) if group.any() else float("nan")
                out[f"{prefix}.{key}{index}"] = (
                    truth, r.split_tolerance(key == "loss_correct") + F32_SPLIT_REL * abs(truth),
                    "pairs at the tie threshold may change group")

    add(".loss", retrieval(vi, vt, temperature), True)
    for kind in rep["logits"]:
        add(f".logits.{kind}", retrieval(vi, vt, temperature, kind=kind), False)
    for mod, sw in rep["alpha_sweep"].items():
        totals = []
        for k, a in enumerate(sw["alpha"]):
            r = retrieval(vi, vt, temperature, a if mod in ("image", "both") else 0.0,
                          a if mod in ("text", "both") else 0.0)
            add(f".alpha_sweep.{mod}", r, True, f"[{k}]")
            totals.append(r.per_pair.mean())
        out[f".alpha_sweep.{mod}.argmin"] = (
            argmin_choices(totals, sw["alpha"]), None,
            "grid points within float32 of the float64 minimum")
    return out


def check_derived(rep: dict, derived: dict) -> list[str]:
    """Each discrete leaf of ``rep`` against its float64 truth (one line per
    mismatch)."""
    rep = json.loads(json.dumps(rep))
    leaves = {path: q for path, q, _ in walk(rep, rep)}
    bad = []
    for path, (truth, tol, why) in derived.items():
        if path not in leaves:               # e.g. sweeps keep no t2i accuracy
            continue
        got = leaves[path]
        got = float("nan") if got is None else got      # the report writes NaN as null
        if isinstance(truth, set):
            if got not in truth:
                bad.append(f"{path}: {got!r}, float64 allows {sorted(truth)} ({why})")
        elif not (abs(got - truth) <= tol or (np.isnan(got) and np.isnan(truth))):
            bad.append(f"{path}: {got!r} vs float64 truth {truth!r}, |diff| "
                       f"{abs(got - truth):.2e} > {tol:.2e} ({why})")
    return bad


def walk(a, b, path=""):
    """Yield (path, a, b) of every leaf of two JSON-like objects."""
    if isinstance(a, dict):
        assert set(a) == set(b), (path, set(a) ^ set(b))
        for k in a:
            yield from walk(a[k], b[k], f"{path}.{k}")
    elif isinstance(a, list):
        assert len(a) == len(b), path
        for i, (p, q) in enumerate(zip(a, b)):
            yield from walk(p, q, f"{path}[{i}]")
    else:
        yield path, a, b


def mismatches(new: dict, old: dict, skip=(), rel: float = F64_REL,
               f32_rel: float = F32_REL) -> list[str]:
    """Every leaf of ``new`` against ``old`` except the paths in ``skip``
    (the discrete float32 leaves, checked against float64 truth instead):
    float64 sections to ``rel``, float32 sections to ``f32_rel``. One line
    per mismatch."""
    new, old = json.loads(json.dumps(new)), json.loads(json.dumps(old))
    bad = []
    for path, p, q in walk(old, new):
        if path in skip:
            continue
        if isinstance(p, float) and isinstance(q, float):
            f32 = any(t in path + "." for t in F32_PATHS)
            tol = f32_rel if f32 else rel
            if not (p == q or abs(q - p) <= tol * abs(p) or (np.isnan(p) and np.isnan(q))):
                kind = "float32 products" if f32 else "float64"
                bad.append(f"{path}: {q!r} vs stored {p!r}, rel {abs(q - p) / abs(p):.2e} > "
                           f"{tol:g} ({kind})")
        elif p != q:
            bad.append(f"{path}: {q!r} vs stored {p!r}")
    return bad


def explain(bad: list[str], recorded: dict) -> str:
    here = machine()
    differ = {k: (recorded.get(k), v) for k, v in here.items() if recorded.get(k) != v}
    return (f"{len(bad)} value(s) outside their stated precision:\n  " + "\n  ".join(bad)
            + "\nrecorded on: " + json.dumps(recorded)
            + "\nthis machine differs in: " + json.dumps(differ)
            + "\nA float32 section that moves by more than its stated precision is a "
              "precision bug (or a README precision to restate); a float64 one is a "
              "change of behaviour.")
