"""The Talk view's story: the Double-Ellipsoid paper's findings as a sequence
of slides, each one figure, one sentence and the number that matters,
computed on whichever dataset is open.

Arrays come from cached calls into clipgeom (no drawing inside a cache);
``build_slides`` returns plain ``Slide`` records and the page draws them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import plotly.graph_objects as go
import streamlit as st

from clipgeom import conformity, projection, store, timeline, validate
from clipgeom._chunks import rmatvec

from . import data
from .figures import MODALITY_COLOURS

# At most this many points per modality in a slide's scatter (seeded sample).
SLIDE_POINTS = 3000
# At most this many rows per modality (seeded sample; all rows below it) for
# what the slides draw from a distribution: the joint SVD's two axes and the
# centred-norm histograms. At 1,000,000 pairs the all-row SVD and summaries took
# minutes; a slide draws 3,000 points.
STAT_ROWS = 20_000


@dataclass
class Slide:
    """One slide: a title, the sentence to say, the number that matters, a figure."""

    key: str
    title: str
    sentence: str
    number_label: str
    number: str
    figure: Callable[[], go.Figure] | None = None
    note: str = ""
    cite: str = ""
    extra: dict = field(default_factory=dict)


# ---------------------------------------------------------------- cached arrays
@st.cache_data(show_spinner=False, max_entries=8)
def _arrays(fingerprint: str, _loaded: data.Loaded, fits: tuple) -> dict:
    """Per-item arrays the slides draw, per modality: ``rows``, a seeded sample
    of at most SLIDE_POINTS rows drawn from ``stat_rows`` (at most STAT_ROWS).

    Exact conformity (Def. 1) against every row (``conformity.exact_conformity``),
    the modality mean m (one float32 pass) and, for the sampled rows only,
    cos(m, v) and the estimate a·cos(m, v) + b (Eq. 11) with the all-row fit
    ``fits`` = ((a, b) image, (a, b) text) of the dataset's report. Centred
    norms ‖v − m‖ (Eq. 1-4) of ``stat_rows``; the joint uncentred SVD of unit
    rows (the cone) fitted on ``stat_rows`` of both modalities. Three float32
    passes over each array (float64 moments took 5 s per million rows)."""
    out, unit = {}, {}
    for mod, x, seed, (a, b) in (("image", _loaded.image, 0, fits[0]),
                                 ("text", _loaded.text, 1, fits[1])):
        x = validate.embeddings(x, f"{mod} embeddings")
        exact = conformity.exact_conformity(x)
        mean = rmatvec(x, np.ones(x.shape[0])) / x.shape[0]
        stat_rows = projection.sample_rows(x.shape[0], STAT_ROWS, seed)
        pos = projection.sample_rows(stat_rows.shape[0], SLIDE_POINTS, seed)
        block = np.asarray(x[stat_rows], dtype=np.float64)
        norms = np.linalg.norm(block, axis=1)
        unit[mod] = block / norms[:, None]
        cos = unit[mod][pos] @ mean / np.linalg.norm(mean)
        out[mod] = {"centered_norms": np.linalg.norm(block - mean, axis=1),
                    "rows": stat_rows[pos], "pos": pos, "exact": exact[stat_rows[pos]],
                    "estimated": a * cos + b,
                    "n_rows": int(x.shape[0]), "n_stat": int(stat_rows.shape[0])}
    # uncentred SVD of the unit rows: the same fit as joint_svd_projection(...,
    # normalize=True) on these rows, whose coordinates are u @ components.T
    comps = projection.joint_svd_projection(unit["image"], unit["text"], 2).components
    for mod in ("image", "text"):
        out[mod]["xy"] = unit[mod][out[mod].pop("pos")] @ comps.T
    return out


@st.cache_data(show_spinner=False, max_entries=8)
def _init_cone(fingerprint: str, name: str) -> dict | None:
    """The joint uncentred SVD at the first training snapshot (random
    initialisation in the demo), or None when the dataset has no snapshots."""
    ds = store.open_dataset(name)
    if not timeline.has_snapshots(ds):
        return None
    step = timeline.snapshot_steps(ds)[0]
    snap = timeline.load_snapshot(ds, step)
    p = projection.joint_svd_projection(snap.image, snap.text, 2, normalize=True)
    return {"step": step, "image": p.image_coords, "text": p.text_coords,
            "conformity": float(np.mean(conformity.exact_conformity(snap.image)))}


@st.cache_data(show_spinner=False, max_entries=8)
def _frequency(fingerprint: str, _loaded: data.Loaded) -> dict | None:
    """Concept frequency of each image where the dataset records it (the demo
    does), with every image's exact conformity (Def. 1) for the correlation."""
    images = store.open_dataset(_loaded.name).images
    if "concept_frequency" not in images.columns:
        return None
    return {"frequency": images["concept_frequency"].to_numpy(dtype=np.float64),
            "conformity": conformity.exact_conformity(_loaded.image)}


def _sampled(arr: dict) -> str:
    """What the caption says when the slide's distribution is a sample."""
    n, k = arr["image"]["n_rows"], arr["image"]["n_stat"]
    return "" if k >= n else f" · a seeded sample of {k:,} of {n:,} rows per modality"


# ---------------------------------------------------------------- figures
def _scatter_pair(xy: dict, *, x_title: str, y_title: str, rows: dict | None = None
                  ) -> go.Figure:
    fig = go.Figure()
    for mod in ("image", "text"):
        if mod not in xy:
            continue
        x, y = xy[mod]
        fig.add_trace(go.Scattergl(x=x, y=y, mode="markers", name=mod,
                                   marker=dict(size=4, opacity=0.6,
                                               color=MODALITY_COLOURS[mod]),
                                   customdata=None if rows is None else rows[mod]))
    fig.update_layout(xaxis_title=x_title, yaxis_title=y_title)
    return fig


def _histograms(values: dict, x_title: str) -> go.Figure:
    fig = go.Figure()
    for mod, v in values.items():
        fig.add_trace(go.Histogram(x=v, name=mod, opacity=0.6,
                                   nbinsx=int(min(60, max(5, len(v) // 5))),
                                   marker_color=MODALITY_COLOURS[mod]))
    fig.update_layout(barmode="overlay", xaxis_title=x_title, yaxis_title="items")
    return fig


def _curves(series: dict, x_title: str, y_title: str, star: tuple | None = None) -> go.Figure:
    fig = go.Figure()
    for name, (x, y) in series.items():
        fig.add_trace(go.Scatter(x=x, y=y, mode="lines+markers", name=name))
    if star is not None:
        fig.add_trace(go.Scatter(x=[star[0]], y=[star[1]], mode="markers", name="minimum",
                                 marker=dict(symbol="star", size=16, color="black")))
    fig.update_layout(xaxis_title=x_title, yaxis_title=y_title)
    return fig


def _fmt(x, spec=".3f") -> str:
    return "n/a" if x is None else format(x, spec)


# ---------------------------------------------------------------- the story
def build_slides(loaded: data.Loaded, rep: dict) -> list[Slide]:
    """The slides for one dataset and its report (``clipgeom.report/1``)."""
    fp = loaded.fingerprint
    # the report's all-row fit of exact conformity on cos(m, v) (Eq. 11)
    fits = tuple((data.report_number(rep[m]["conformity"]["a"]),
                  data.report_number(rep[m]["conformity"]["b"])) for m in ("image", "text"))
    arr = _arrays(fp, loaded, fits)
    stored = loaded.name != data.SYNTHETIC
    img, txt, sep = rep["image"], rep["text"], rep["separability"]
    slides: list[Slide] = []

    # 1. the cone (at initialisation when the dataset records it)
    cone = _init_cone(fp, loaded.name) if stored else None
    if cone is not None:
        xy = {m: (cone[m][:, 0], cone[m][:, 1]) for m in ("image", "text")}
        slides.append(Slide(
            "cone", "A narrow cone, before any training",
            f"At step {cone['step']} (random weights) the unit-normalised embeddings already "
            "sit in a narrow cone, each modality on its own side: the gap is there at "
            "initialisation.",
            "mean cosine between images at initialisation", _fmt(cone["conformity"], ".4f"),
            lambda xy=xy: _scatter_pair(xy, x_title="component 1", y_title="component 2"),
            cite="Tyshchuk et al. Fig. 2; Liang et al. Fig. 1 (cone effect)"))
    xy = {m: (arr[m]["xy"][:, 0], arr[m]["xy"][:, 1]) for m in ("image", "text")}
    rows = {m: arr[m]["rows"] for m in ("image", "text")}
    slides.append(Slide(
        "gap", "Two modalities, two regions",
        "One uncentred SVD of all unit-normalised rows: images and captions occupy "
        "separate regions of the sphere, the modality gap.",
        "cosine between the image and text means", _fmt(rep["modality_gap"]["mean_cosine"]),
        lambda: _scatter_pair(xy, x_title="component 1", y_title="component 2", rows=rows),
        cite="Tyshchuk et al. Fig. 8; Double-Ellipsoid Sec. 4" + _sampled(arr)))

    # 2. thin shells
    slides.append(Slide(
        "shells", "Each modality is a thin shell",
        "The distance of each raw embedding to its modality mean is concentrated far from "
        "zero: no mass near the centre, so ‖x − m‖ ≈ √E‖x − m‖².",
        "shell radius image · text (relative error of Eq. 4)",
        f"{_fmt(img['shell_radius'], '.2f')} · {_fmt(txt['shell_radius'], '.2f')} "
        f"({_fmt(img['rms_rel_error'], '.1%')} · {_fmt(txt['rms_rel_error'], '.1%')})",
        lambda: _histograms({m: arr[m]["centered_norms"] for m in ("image", "text")},
                            "‖v − m‖ (centred norm)"),
        cite="Double-Ellipsoid Eq. 1-4, Fig. 4" + _sampled(arr)))

    # 3. separable features
    per = np.sort(np.asarray(sep["per_feature"]))[::-1]

    def sep_fig():
        fig = go.Figure(go.Scatter(y=per, mode="lines", name="Sep(l)"))
        fig.add_hline(y=1.0, line_dash="dash", annotation_text="Sep = 1")
        fig.update_layout(xaxis_title="features, sorted", yaxis_title="Sep(l)")
        return fig

    slides.append(Slide(
        "separable", "A few features tag the modality",
        f"{sep['n_above_1']} features separate image from text by more than their pooled "
        f"spread; a linear SVM on the best two features alone reaches "
        f"{_fmt(sep['svm_top2']['accuracy'], '.0%')}.",
        "linear separability (all features)", _fmt(sep.get("linear_accuracy"), ".1%"),
        sep_fig, cite="Double-Ellipsoid Eq. 5, Figs. 2-3"))

    # 4. offset means
    def offset_fig():
        fig = go.Figure()
        for mod, r in (("image", img), ("text", txt)):
            fig.add_trace(go.Bar(x=[mod], y=[r["mean_over_sigma"]], name=mod,
                                 marker_color=MODALITY_COLOURS[mod],
                                 text=[f"{r['mean_over_sigma']:.2f}"], textposition="outside"))
        fig.add_hline(y=1.0, line_dash="dot", annotation_text="‖m‖ = ‖σ‖")
        fig.update_layout(yaxis_title="‖m‖ / ‖σ‖", showlegend=False)
        return fig

    slides.append(Slide(
        "offset", "The shells are not centred at the origin",
        "Each modality's mean is comparable to its spread: a double ellipsoid, offset "
        "from the origin (the paper: 0.94 images, 1.03 text for CLIP ViT-B/32).",
        "‖m‖/‖σ‖ image · text",
        f"{_fmt(img['mean_over_sigma'], '.2f')} · {_fmt(txt['mean_over_sigma'], '.2f')}",
        offset_fig, cite="Double-Ellipsoid Sec. 4"))

    # 5. the alpha-shift minimum
    if rep.get("alpha_sweep"):
        sw = rep["alpha_sweep"]
        both = sw.get("both") or next(iter(sw.values()))
        k = int(np.argmin(both["total"]))
        series = {f"{m} shifted": (s["alpha"], s["total"]) for m, s in sw.items()}
        edge = k in (0, len(both["alpha"]) - 1)
        slides.append(Slide(
            "alpha", "The loss prefers the offset",
            "Moving the means towards the origin (v′ = v − α m) does not lower the "
            "contrastive loss: its minimum sits near α = 0, where training left it.",
            "α at the minimum (both shifted)", f"{both['alpha'][k]:+.1f}",
            lambda: _curves(series, "α (v′ = v − α m)", "CLIP loss",
                            (both["alpha"][k], both["total"][k])),
            note="The minimum is at the edge of the α range." if edge else "",
            cite="Double-Ellipsoid Eq. 9, 14-15, Fig. 6"))

    # 6. conformity vs its estimate
    cf = {m: (arr[m]["estimated"], arr[m]["exact"]) for m in ("image", "text")}
    slides.append(Slide(
        "conformity", "Conformity is the cosine to the mean",
        "The average cosine of an item to all others (conformity, O(N²) by definition) is "
        "an affine function of its cosine to the modality mean.",
        "Pearson, exact vs estimate (image · text)",
        f"{_fmt(img['conformity']['pearson'], '.4f')} · "
        f"{_fmt(txt['conformity']['pearson'], '.4f')}",
        lambda: _scatter_pair(cf, x_title="estimated conformity a·cos(m, v) + b",
                              y_title="exact conformity", rows=rows),
        cite="Double-Ellipsoid Def. 1-2, Eq. 10-11, Fig. 9"))

    # 7. frequency vs conformity
    freq = _frequency(fp, loaded) if stored else None
    if freq is not None:
        f = freq["frequency"]
        c = freq["conformity"]
        rho = conformity.frequency_correlation(c, f)

        def freq_fig():
            r = arr["image"]["rows"]
            fig = go.Figure(go.Scattergl(x=f[r], y=c[r], mode="markers", name="image",
                                         customdata=r,
                                         marker=dict(size=4, opacity=0.5)))
            fig.update_layout(xaxis_title="concept frequency in the training world",
                              yaxis_title="image conformity", xaxis_type="log")
            return fig

        slides.append(Slide(
            "frequency", "Common concepts conform more",
            "Images of frequent concepts have high conformity, rare ones low: conformity "
            "tracks how often the training data showed a concept.",
            "Spearman ρ (frequency, conformity)", _fmt(rho.get("rho"), "+.2f"),
            freq_fig, cite="Double-Ellipsoid Prediction 1, Sec. 6"))

    # 8. the gap's role
    ck = rep.get("conformity_kl")
    if ck:
        k = int(np.argmin(ck["kl"]))
        edge = k in (0, len(ck["alpha"]) - 1)
        slides.append(Slide(
            "gap-role", "The gap matches the two conformity distributions",
            "Shifting the means changes how image and text conformity are distributed; "
            "they agree best near α = 0: the gap lets both modalities conform alike.",
            f"KL(image ‖ text) at α = 0 · argmin ({ck['modality']})",
            f"{_fmt(ck['at_zero'], '.3f')} · {ck['alpha'][k]:+.1f}",
            lambda: _curves({f"shift {ck['modality']}": (ck["alpha"], ck["kl"])},
                            "α", "KL(image ‖ text) of conformity",
                            (ck["alpha"][k], ck["kl"][k])),
            note="The minimum is at the edge of the α range." if edge else "",
            cite="Double-Ellipsoid Figs. 10-11"))
    return slides
