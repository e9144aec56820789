"""Alpha shift & loss: Double-Ellipsoid Sec. 5 (Eq. 7-9, 14, 15; Figs. 6, 11)
and the EuCLIP paper's logit geometries."""

import numpy as np
import pandas as pd
import plotly.graph_objects as go
import streamlit as st

from dashboard import figures, lossconf, ui

loaded = ui.page_header("alpha shift & loss")

st.title("Alpha shift & the CLIP loss")
st.caption("Double-Ellipsoid Sec. 5: the NT-Xent loss on the whole set as one batch "
           "(Eq. 7-8) while the image and/or text ellipsoid is shifted along its mean, "
           "v' = v − α m (Eq. 9, 14, 15).")

box = figures.controls()
with box:
    lo, hi = st.slider("α range", min_value=-2.0, max_value=2.0, value=(-1.0, 1.0),
                       step=0.1, key="alpha_range")
    step = st.number_input("α step", min_value=0.01, max_value=1.0, value=0.1, step=0.05,
                           format="%.2f", key="alpha_step")
    temperature = ui.temperature_input(loaded, st)
    modality = st.radio("Which modality moves", ["image", "text", "both"], horizontal=True,
                        key="alpha_modality",
                        help="image: Eq. 9; text: Eq. 14; both, each by its own mean: Eq. 15.")
    max_pairs = st.number_input("Pairs in the loss batch", min_value=10, max_value=25000,
                                value=lossconf.DEFAULT_MAX_PAIRS, step=500, key="loss_pairs",
                                help="A seeded sample of at most this many pairs "
                                     "(one caption per image).")

alphas = lossconf.alpha_grid(float(lo), float(hi), float(step))
if len(alphas) > 201:
    st.info(f"{len(alphas)} values of α: increase the step (at most 201 values).")
    st.stop()
fp = loaded.fingerprint
hover = "α=%{x:.2f}<br>%{fullData.name}=%{y:.4f}<extra></extra>"


def mark_min(fig: go.Figure, x, y, name: str) -> None:
    """Mark the lowest point of a curve (the numbers come from the sweep)."""
    y = np.asarray(y, float)
    if not np.any(np.isfinite(y)):
        return
    k = int(np.nanargmin(y))
    fig.add_trace(go.Scatter(x=[x[k]], y=[y[k]], mode="markers", showlegend=False,
                             marker=dict(symbol="star", size=14, color="black"),
                             name=f"min {name}",
                             hovertemplate=f"minimum of {name}<br>α=%{{x:.2f}}"
                                           "<br>value=%{y:.4f}<extra></extra>"))


if not lossconf.has_pairs(loaded):
    st.info(f"This dataset has {len(loaded.pair_image_rows)} image–caption pair(s); the "
            "loss needs at least 2 pairs (one caption per image). Import captions that "
            "name their image, or paired arrays. The conformity KL below needs no pairs.")
    sw = None
else:
    with ui.user_errors():
        sw = lossconf.alpha_sweep(fp, loaded, alphas, modality, float(temperature),
                                  int(max_pairs))
        geo = lossconf.logits(fp, loaded, float(temperature), int(max_pairs))
    n_used = geo["cosine"].n_pairs
    n_all = len(loaded.pair_image_rows)
    st.caption(f"Loss on {n_used:,} of {n_all:,} pairs"
               + (" (seeded sample)" if n_used < n_all else "") + f", τ = {temperature:g}.")

    c1, c2, c3 = st.columns(3)
    c1.metric("Lowest loss at α", f"{sw.argmin:+.2f}")
    c2.metric("Lowest total loss", f"{float(np.min(sw.total)):.4f}")
    at0 = np.flatnonzero(np.isclose(sw.alpha, 0.0, atol=1e-9))
    c3.metric("Loss at α = 0 (unshifted, Eq. 7-8)",
              f"{float(sw.total[at0[0]]):.4f}" if at0.size else "α = 0 not in the grid")

    def curves(series, xaxis_title, yaxis_title):
        """One line per (name, values) over the alpha grid, each minimum starred."""
        fig = go.Figure()
        for name, y in series:
            fig.add_trace(go.Scatter(x=sw.alpha, y=y, mode="lines+markers", name=name,
                                     hovertemplate=hover))
            mark_min(fig, sw.alpha, y, name)
        fig.update_layout(xaxis_title=xaxis_title, yaxis_title=yaxis_title)
        return fig

    st.subheader("Total, alignment and uniformity (Fig. 6, top)")
    fig = curves((("total", sw.total), ("alignment", sw.alignment),
                  ("uniformity", sw.uniformity)),
                 f"α (shift {modality}: v' = v − α m)", "loss")
    figures.show(fig, f"Double-Ellipsoid Fig. 6 (top), Eq. 7-8 under the shift of "
                      f"{ {'image': 'Eq. 9', 'text': 'Eq. 14', 'both': 'Eq. 15'}[modality] }: "
                      "loss = alignment + uniformity; ★ marks each curve's minimum. "
                      "The paper finds the total lowest near α = 0.", key="fig6-top")

    st.subheader("All, correctly and wrongly classified pairs (Fig. 6, bottom)")
    fig = curves((("all pairs", sw.total), ("correct", sw.loss_correct),
                  ("misclassified", sw.loss_misclassified)),
                 f"α (shift {modality})", "mean loss per pair")
    figures.show(fig, "Double-Ellipsoid Fig. 6 (bottom): the mean per-pair loss over all "
                      "pairs, the correctly retrieved ones (image→text and text→image) and "
                      "the rest; ★ marks each minimum.", key="fig6-bottom")

    figures.table(height="auto", df=pd.DataFrame({
        "alpha": sw.alpha, "total": sw.total, "alignment": sw.alignment,
        "uniformity": sw.uniformity, "loss_correct": sw.loss_correct,
        "loss_misclassified": sw.loss_misclassified, "accuracy_i2t": sw.accuracy_i2t,
        "accuracy_t2i": sw.accuracy_t2i}), key=f"alpha-sweep-{modality}",
        caption="The sweep behind Fig. 6.")

st.subheader("Conformity KL(image ‖ text) vs α (Fig. 11)")
with ui.user_errors():
    kls = lossconf.kl_sweep(fp, loaded, alphas, modality)
fig = go.Figure(go.Scatter(x=kls.alpha, y=kls.kl, mode="lines+markers", name="KL",
                           hovertemplate=hover))
mark_min(fig, kls.alpha, kls.kl, "KL")
fig.update_layout(xaxis_title=f"α (shift {modality})", yaxis_title="KL(image ‖ text)")
figures.show(fig, f"Double-Ellipsoid Fig. 11: KL between the image and text conformity "
                  f"distributions ({kls.bins} shared bins, all items) while shifting "
                  f"{modality}; ★ marks the minimum (α = {kls.argmin:+.2f}). The paper "
                  "finds it smallest near α = 0 (KL ≈ 0.14 on MS-COCO).", key="fig11")

if sw is not None:
    st.subheader("Loss under other logit geometries (EuCLIP)")
    labels = {"cosine": "cosine", "dot": "dot product", "neg_distance": "−distance",
              "neg_sq_distance": "−distance²"}
    df = pd.DataFrame([{"logit": labels.get(k, k), "total": r.total,
                        "alignment": r.alignment, "uniformity": r.uniformity,
                        "accuracy_i2t": r.accuracy_i2t, "accuracy_t2i": r.accuracy_t2i}
                       for k, r in geo.items()])
    figures.table(height="auto", df=df, key="logit-comparison",
                  caption="EuCLIP paper: the CLIP loss on raw embeddings with cosine, dot "
                          "product, negative distance and negative squared distance logits "
                          "(each divided by τ).")
    fig = go.Figure(go.Bar(x=df["logit"], y=df["total"], name="total loss",
                           customdata=df[["alignment", "uniformity"]].to_numpy(),
                           hovertemplate="%{x}<br>total=%{y:.4f}<br>alignment="
                                         "%{customdata[0]:.4f}<br>uniformity="
                                         "%{customdata[1]:.4f}<extra></extra>"))
    fig.update_layout(xaxis_title="logit", yaxis_title="CLIP loss")
    figures.show(fig, "EuCLIP paper (logit geometries), with Double-Ellipsoid Eq. 7-8 as "
                      "the loss: total loss per logit kind.", key="logits", height=340)
