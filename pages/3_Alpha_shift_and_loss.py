"""Alpha shift & loss: Double-Ellipsoid Sec. 5 (Eq. 7-9, 14, 15; Figs. 6, 11)
and the EuCLIP paper's logit geometries."""

import numpy as np
import pandas as pd
import plotly.graph_objects as go
import streamlit as st
from plotly.subplots import make_subplots

from dashboard import figures, lossconf, ui

loaded = ui.page_header("alpha shift & loss")

st.title("Alpha shift & the CLIP loss")
st.caption("Double-Ellipsoid Sec. 5: the NT-Xent loss on the whole set as one batch "
           "(Eq. 7-8) while the image and/or text ellipsoid is shifted along its mean, "
           "v' = v − α m (Eq. 9, 14, 15).")

EQ = {"image": "Eq. 9", "text": "Eq. 14", "both": "Eq. 15"}
EDGE_NOTE = "The minimum is at the edge of the range; widen it."
fp = loaded.fingerprint

# ---------------------------------------------------------------- controls
lo, hi, step, modality, kl_modality = -1.0, 1.0, 0.1, "image", "both"
temperature, max_pairs = loaded.default_temperature, lossconf.DEFAULT_MAX_PAIRS
with figures.controls(), ui.section("Controls"):
    lo, hi = st.slider("α range", min_value=-2.0, max_value=2.0, value=(-1.0, 1.0),
                       step=0.1, key="alpha_range")
    step = st.number_input("α step", min_value=0.01, max_value=1.0, value=0.1, step=0.05,
                           format="%.2f", key="alpha_step")
    temperature = ui.temperature_input(loaded, st)
    moves = ["image", "text", "both"]
    modality = st.radio("Which modality moves (Fig. 6)", moves,
                        index=moves.index(ui.url_value("alpha_modality", "image", str))
                        if ui.url_value("alpha_modality", "image", str) in moves else 0,
                        horizontal=True, key="alpha_modality",
                        help="image: Eq. 9; text: Eq. 14; both, each by its own mean: Eq. 15.")
    kl_moves = ["both", "image", "text"]
    kl_modality = st.radio("Which modality moves (Fig. 11)", kl_moves,
                           index=kl_moves.index(ui.url_value("kl_modality", "both", str))
                           if ui.url_value("kl_modality", "both", str) in kl_moves else 0,
                           horizontal=True, key="kl_modality",
                           help="The paper's Fig. 11 shifts both modalities, each by its "
                                "own mean (Eq. 15).")
    max_pairs = st.number_input("Pairs in the loss batch", min_value=2, max_value=25000,
                                value=lossconf.DEFAULT_MAX_PAIRS, step=500, key="loss_pairs",
                                help="A seeded sample of at most this many pairs "
                                     "(one caption per image).")

ui.url_keep("alpha_modality", modality)     # a copied link reopens this view
ui.url_keep("kl_modality", kl_modality)
alphas = lossconf.alpha_grid(float(lo), float(hi), float(step))
grid_ok = len(alphas) <= lossconf.MAX_ALPHAS
hover = "α=%{x:.2f}<br>%{fullData.name}=%{y:.4f}<extra></extra>"
if not grid_ok:
    st.info(f"{len(alphas)} values of α: increase the step (at most "
            f"{lossconf.MAX_ALPHAS} values).")


def mark_min(fig: go.Figure, x, y, name: str, **where) -> None:
    """Mark the lowest point of a curve (the numbers come from the sweep)."""
    y = np.asarray(y, float)
    if not np.any(np.isfinite(y)):
        return
    k = int(np.nanargmin(y))
    fig.add_trace(go.Scatter(x=[x[k]], y=[y[k]], mode="markers", showlegend=False,
                             marker=dict(symbol="star", size=14, color="black"),
                             name=f"min {name}",
                             hovertemplate=f"minimum of {name}<br>α=%{{x:.2f}}"
                                           "<br>value=%{y:.4f}<extra></extra>"), **where)


def line(x, y, name: str, series: int) -> go.Scatter:
    return go.Scatter(x=x, y=y, mode="lines+markers", name=name, hovertemplate=hover,
                      line=dict(color=figures.colour(series)),
                      marker=dict(color=figures.colour(series)))


def fig6_top(sw) -> go.Figure:
    """The total loss in its own panel (its U is ~10x smaller than the two terms)."""
    fig = make_subplots(rows=2, cols=1, shared_xaxes=True, vertical_spacing=0.1,
                        subplot_titles=("total loss = alignment + uniformity",
                                        "alignment and uniformity"))
    fig.add_trace(line(sw.alpha, sw.total, "total", 2), row=1, col=1)
    mark_min(fig, sw.alpha, sw.total, "total", row=1, col=1)
    for name, y, series in (("alignment", sw.alignment, 3), ("uniformity", sw.uniformity, 4)):
        fig.add_trace(line(sw.alpha, y, name, series), row=2, col=1)
        mark_min(fig, sw.alpha, y, name, row=2, col=1)
    fig.update_yaxes(title_text="total loss", row=1, col=1)
    fig.update_yaxes(title_text="term", row=2, col=1)
    fig.update_xaxes(title_text=f"α (shift {modality}: v' = v − α m)", row=2, col=1)
    return fig


def fig6_bottom(sw) -> go.Figure:
    fig = go.Figure()
    for name, y, series in (("all pairs", sw.total, 2), ("correct", sw.loss_correct, 5),
                            ("misclassified", sw.loss_misclassified, 6)):
        fig.add_trace(line(sw.alpha, y, name, series))
        mark_min(fig, sw.alpha, y, name)
    fig.update_layout(xaxis_title=f"α (shift {modality})", yaxis_title="mean loss per pair")
    return fig


def draw_sweep(sw, n_used: int, n_all: int, source: str) -> None:
    st.caption(f"Loss on {n_used:,} of {n_all:,} pairs"
               + (" (seeded sample)" if n_used < n_all else "")
               + f", τ = {temperature:g}; {source}.")
    c1, c2, c3 = st.columns(3)
    c1.metric("Lowest loss at α", f"{sw.argmin:+.2f}")
    c2.metric("Lowest total loss", f"{float(np.nanmin(sw.total)):.4f}")
    at0 = np.flatnonzero(np.isclose(sw.alpha, 0.0, atol=1e-9))
    c3.metric("Loss at α = 0 (unshifted, Eq. 7-8)",
              f"{float(sw.total[at0[0]]):.4f}" if at0.size else "α = 0 not in the grid")
    if lossconf.min_on_edge(sw.alpha, sw.total):
        st.warning(f"Total loss: {EDGE_NOTE}", icon="↔️")
    figures.show(fig6_top(sw), f"Double-Ellipsoid Fig. 6 (top), Eq. 7-8 under the shift of "
                               f"{EQ[modality]}: loss = alignment + uniformity, the total in "
                               "its own panel; ★ marks each curve's minimum. The paper finds "
                               "the total lowest near α = 0.", key="fig6-top", height=560)
    st.subheader("All, correctly and wrongly classified pairs (Fig. 6, bottom)")
    figures.show(fig6_bottom(sw), "Double-Ellipsoid Fig. 6 (bottom): the mean per-pair loss "
                                  "over all pairs, the correctly retrieved ones (image→text "
                                  "and text→image) and the rest; ★ marks each minimum.",
                 key="fig6-bottom")
    table = pd.DataFrame({
        "alpha": sw.alpha, "total": sw.total, "alignment": sw.alignment,
        "uniformity": sw.uniformity, "loss_correct": sw.loss_correct,
        "loss_misclassified": sw.loss_misclassified, "accuracy_i2t": sw.accuracy_i2t,
        "accuracy_t2i": sw.accuracy_t2i})
    if np.all(np.isnan(sw.accuracy_t2i)):
        table = table.drop(columns="accuracy_t2i")    # the stored report does not keep it
    figures.table(height="auto", df=table, key=f"alpha-sweep-{modality}",
                  caption="The sweep behind Fig. 6.")


# ---------------------------------------------------------------- Fig. 6
with ui.section("Fig. 6: loss vs α"):
    st.subheader("Total, alignment and uniformity (Fig. 6, top)")
    if not lossconf.has_pairs(loaded):
        st.info(f"This dataset has {len(loaded.pair_image_rows)} image–caption pair(s); the "
                "loss needs at least 2 pairs (one caption per image). Import captions that "
                "name their image, or paired arrays. The conformity KL below needs no pairs.")
    elif grid_ok:
        n_used = lossconf.pairs_used(loaded, max_pairs)
        n_all = len(loaded.pair_image_rows)
        stored = lossconf.stored_results(loaded, float(temperature), int(max_pairs))
        sw = lossconf.sweep_from_report(stored, modality, alphas)
        bar_slot, block = st.empty(), st.empty()
        if sw is not None:
            with block.container():
                draw_sweep(sw, n_used, n_all, "read from the dataset's stored report")
        else:
            # Progressive: a coarse pass over the whole range is drawn at once, the
            # remaining values refine it. Progress is drawn here, between cached calls
            # (a first visit only: a rerun of a finished sweep reads it from the cache).
            batches = lossconf.sweep_batches(alphas)
            sig = (fp, alphas, modality, float(temperature), n_used)
            done = st.session_state.setdefault("alpha_sweeps_done", [])
            show_steps = sig not in done and len(batches) > 1
            parts = []
            for k, batch in enumerate(batches):
                parts.append(lossconf.alpha_sweep_part(fp, loaded, batch, modality,
                                                       float(temperature), n_used))
                if show_steps and k + 1 < len(batches):
                    n_done = sum(len(b) for b in batches[:k + 1])
                    bar_slot.progress(n_done / len(alphas),
                                      text=f"α sweep ({modality}) on {n_used:,} pairs: "
                                           f"{n_done} of {len(alphas)} values of α; "
                                           "refining…")
                    if k == 0:                  # the coarse curve, drawn at once
                        with block.container():
                            st.plotly_chart(figures.style(fig6_top(lossconf.merge(parts)),
                                                          height=560), width="stretch")
            sw = lossconf.merge(parts)
            if sig not in done:
                done.append(sig)
                del done[:-32]
            bar_slot.empty()
            with block.container():
                draw_sweep(sw, n_used, n_all, f"computed on {len(alphas)} values of α")

# ---------------------------------------------------------------- Fig. 11
with ui.section("Fig. 11: conformity KL vs α"):
    st.subheader("Conformity KL(image ‖ text) vs α (Fig. 11)")
    if grid_ok:
        bins = lossconf.default_bins(min(loaded.image.shape[0], loaded.text.shape[0]))
        kls = lossconf.kl_sweep(fp, loaded, alphas, kl_modality, bins)
        fig = go.Figure(line(kls.alpha, kls.kl, "KL", 2))
        mark_min(fig, kls.alpha, kls.kl, "KL")
        fig.update_layout(xaxis_title=f"α (shift {kl_modality})",
                          yaxis_title="KL(image ‖ text)")
        if lossconf.min_on_edge(kls.alpha, kls.kl):
            st.warning(f"KL: {EDGE_NOTE} (minimum at α = {kls.argmin:+.2f}, the grid's "
                       f"{'first' if kls.argmin == kls.alpha[0] else 'last'} value).",
                       icon="↔️")
        few = (f" Only {bins} bins: the smaller modality has "
               f"{min(loaded.image.shape[0], loaded.text.shape[0])} items."
               if bins < lossconf.DEFAULT_BINS else "")
        figures.show(fig, f"Double-Ellipsoid Fig. 11: KL between the image and text "
                          f"conformity distributions ({kls.bins} shared bins, all items) "
                          f"while shifting {kl_modality} ({EQ[kl_modality]}); ★ marks the "
                          f"minimum (α = {kls.argmin:+.2f}). The paper shifts both and "
                          "finds it smallest near α = 0 (KL ≈ 0.14 on MS-COCO)." + few,
                     key="fig11")

# ---------------------------------------------------------------- EuCLIP
with ui.section("Loss under other logit geometries"):
    if lossconf.has_pairs(loaded):
        st.subheader("Loss under other logit geometries (EuCLIP)")
        geo = lossconf.logits(fp, loaded, float(temperature), int(max_pairs))
        labels = {"cosine": "cosine", "dot": "dot product", "neg_distance": "−distance",
                  "neg_sq_distance": "−distance²"}
        df = pd.DataFrame([{"logit": labels.get(k, k), **r} for k, r in geo.items()])
        figures.table(height="auto", df=df, key="logit-comparison",
                      caption="EuCLIP paper: the CLIP loss on raw embeddings with cosine, "
                              "dot product, negative distance and negative squared distance "
                              "logits (each divided by τ).")
        fig = go.Figure(go.Bar(x=df["logit"], y=df["total"], name="total loss",
                               marker_color=figures.colour(2),
                               customdata=df[["alignment", "uniformity"]].to_numpy(),
                               hovertemplate="%{x}<br>total=%{y:.4f}<br>alignment="
                                             "%{customdata[0]:.4f}<br>uniformity="
                                             "%{customdata[1]:.4f}<extra></extra>"))
        fig.update_layout(xaxis_title="logit", yaxis_title="CLIP loss")
        figures.show(fig, "EuCLIP paper (logit geometries), with Double-Ellipsoid Eq. 7-8 "
                          "as the loss: total loss per logit kind.", key="logits", height=340)
