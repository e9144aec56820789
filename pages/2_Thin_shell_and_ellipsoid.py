"""Thin shell and ellipsoid shape (Double-Ellipsoid Eq. 1-4, 6; Figs. 4-5, 14)."""

import plotly.graph_objects as go
import streamlit as st
from plotly.subplots import make_subplots

from dashboard import figures, shape, ui

loaded = ui.page_header("thin shell and ellipsoid")

st.title("Thin shell and ellipsoid")
st.caption("Levi & Gilboa, *The Double-Ellipsoid Geometry of CLIP*, Sec. 3-4: with "
           "x = v − m, ‖x‖ = μ_norm + y and E‖x‖² = μ_norm² + var(y) (Eq. 1-4), so each "
           "modality lies on a thin shell around its mean; the shell is an ellipsoid "
           "(long-tailed feature variances), tilted (off-diagonal dominance, Eq. 6) "
           "and offset from the origin (‖m‖/‖σ‖).")

COL = {"image": "#1f77b4", "text": "#d62728"}
MODS = ("image", "text")

ctl = figures.controls()
with ctl:
    bins = st.slider("Histogram bins", 20, 200, 60, step=10, key="shell_bins")
    view = st.radio("First ten centred features as", ["box plots", "histograms"],
                    key="shell_feature_view", horizontal=True)
    norm_kind = st.radio("Extreme items by", ["raw norm ‖v‖", "centred norm ‖v − m‖"],
                         key="shell_extreme_kind")
    k_ext = st.slider("Items per list", 3, 30, 8, key="shell_extreme_k")

with ui.user_errors():
    sh = shape.shell(loaded.fingerprint, loaded, int(bins))

# ---------------------------------------------------------------- metrics
st.subheader("Thin-shell statistics (Eq. 1-4)")
for mod in MODS:
    s = sh[mod]["shell"]
    c = st.columns(5)
    c[0].metric(f"{mod}: μ_norm = E‖v − m‖", f"{s.mean_norm:.4f}",
                help="The shell radius (Eq. 1).")
    c[1].metric(f"{mod}: var(y) = var‖v − m‖", f"{s.norm_var:.4f}",
                help="The shell's thickness squared (Eq. 2).")
    c[2].metric(f"{mod}: √E‖v − m‖²", f"{s.rms_norm:.4f}", help="= √tr(C) (Eq. 3).")
    c[3].metric(f"{mod}: relative error", f"{s.rms_rel_error:.3%}",
                help="(√E‖x‖² − μ_norm) / μ_norm: small when μ_norm² ≫ var(y) (Eq. 4). "
                     "Paper, ViT-B/32 images: 0.18%.")
    c[4].metric(f"{mod}: ‖m‖/‖σ‖", f"{sh[mod]['mean_over_sigma']:.3f}",
                help=f"‖m‖ = {sh[mod]['mean_norm']:.4f}, ‖σ‖ = {sh[mod]['sigma_norm']:.4f}. "
                     "Paper: 0.94 images, 1.03 text (Sec. 4).")


def hist_fig(key: str, xtitle: str) -> go.Figure:
    fig = go.Figure()
    for mod in MODS:
        h = sh[mod][key] if key != "centered" and key != "raw" else sh[mod]["norm_hist"][key]
        centres = (h.edges[:-1] + h.edges[1:]) / 2
        fig.add_trace(go.Bar(x=centres, y=h.counts, width=float(h.edges[1] - h.edges[0]),
                             name=mod, marker_color=COL[mod], opacity=0.6,
                             customdata=list(zip(h.edges[:-1], h.edges[1:])),
                             hovertemplate=f"{mod}<br>[%{{customdata[0]:.3f}}, "
                                           "%{customdata[1]:.3f})<br>count=%{y}"
                                           "<extra></extra>"))
    fig.update_layout(barmode="overlay", xaxis_title=xtitle, yaxis_title="count")
    return fig


# ---------------------------------------------------------------- norm histograms
st.subheader("Norm histograms (Fig. 4 bottom)")
c1, c2 = st.columns(2)
with c1:
    fig = hist_fig("centered", "‖v − m‖")
    figures.show(fig, "‖v − m‖ per modality, from 0: the empty region near 0 is the thin "
                      "shell — no embedding lies near its modality's mean. "
                      "Double-Ellipsoid Fig. 4 (bottom), Eq. 1-4.",
                 key="shell-centred-norms", height=360)
with c2:
    fig = hist_fig("raw", "‖v‖")
    figures.show(fig, "Raw norms ‖v‖ (distance from the origin, before L2 normalisation). "
                      "Double-Ellipsoid Sec. 3.2.", key="shell-raw-norms", height=360)

# ---------------------------------------------------------------- first ten features
st.subheader("The first ten mean-subtracted features (Fig. 4 top)")
cap = figures.MAX_SCATTER_POINTS // 2
with ui.user_errors():
    cf = shape.centered_first_features(loaded.fingerprint, loaded, 10, cap)
if any(cf[m]["n_shown"] < cf[m]["n_total"] for m in MODS):
    st.caption("Drawn from a seeded sample: " + ", ".join(
        f"{cf[m]['n_shown']:,} of {cf[m]['n_total']:,} {m} rows" for m in MODS) + ".")
feats = cf["image"]["features"]
if view == "box plots":
    fig = go.Figure()
    for mod in MODS:
        vals = cf[mod]["values"]
        x = [f"f{f}" for f in feats for _ in range(vals.shape[0])]
        fig.add_trace(go.Box(x=x, y=vals.T.ravel(), name=mod, marker_color=COL[mod],
                             boxpoints=False,
                             hovertemplate=f"{mod} %{{x}}<br>v − m = %{{y:.3f}}"
                                           "<extra></extra>"))
    fig.update_layout(boxmode="group", xaxis_title="feature", yaxis_title="v(l) − m(l)")
else:
    ncol = 5
    nrow = (len(feats) + ncol - 1) // ncol
    fig = make_subplots(rows=nrow, cols=ncol, subplot_titles=[f"feature {f}" for f in feats])
    for j, f in enumerate(feats):
        for mod in MODS:
            fig.add_trace(go.Histogram(x=cf[mod]["values"][:, j], name=mod,
                                       marker_color=COL[mod], opacity=0.6, nbinsx=40,
                                       histnorm="probability", showlegend=(j == 0),
                                       legendgroup=mod,
                                       hovertemplate=f"{mod}, feature {f}<br>v − m = %{{x}}"
                                                     "<br>p=%{y:.3f}<extra></extra>"),
                          row=j // ncol + 1, col=j % ncol + 1)
    fig.update_layout(barmode="overlay")
figures.show(fig, "Each centred feature is concentrated around 0 with its own spread; "
                  "Double-Ellipsoid Fig. 4 (top).", key="shell-first-features", height=420)

# ---------------------------------------------------------------- ellipsoid
st.subheader("Ellipsoid: feature variances and tilt (Fig. 5)")
c1, c2 = st.columns(2)
with c1:
    fig = hist_fig("variance_hist", "feature variance σ²(l)")
    vmax = {m: float(sh[m]["variance"][0]) for m in MODS}
    figures.show(fig, "Histogram of per-feature variances: a long tail, not a sphere "
                      f"(largest: image {vmax['image']:.4f}, text {vmax['text']:.4f}). "
                      "Double-Ellipsoid Fig. 5 (left).", key="shell-variance", height=360)
with c2:
    fig = hist_fig("odd_hist", "ODD(l) = Σ_{k≠l} |C_lk| / C_ll")
    fig.add_vline(x=1.0, line_dash="dash", annotation_text="ODD = 1")
    figures.show(fig, "Off-diagonal dominance per feature: values above 1 mean the "
                      "ellipsoid is tilted relative to the axes. Double-Ellipsoid Fig. 5 "
                      "(right), Eq. 6.", key="shell-odd", height=360)

# ---------------------------------------------------------------- extremes
st.subheader("Items with the largest and smallest norms (Fig. 14)")
which = "raw" if norm_kind.startswith("raw") else "centered"
with ui.user_errors():
    ext = shape.extremes(loaded.fingerprint, loaded, which, int(k_ext))
    labels = shape.item_labels(loaded.fingerprint, loaded)
norm_col = "‖v‖" if which == "raw" else "‖v − m‖"
c1, c2 = st.columns(2)
for col, end in ((c1, "largest"), (c2, "smallest")):
    with col:
        st.markdown(f"**Captions with the {end} {norm_col}**")
        df = shape.extremes_table(ext["text"][end], labels["captions"], "caption")
        figures.table(df.rename(columns={"norm": norm_col}), key=f"captions-{end}-{which}",
                      caption="Double-Ellipsoid Fig. 14: the largest-norm captions tend to "
                              "be the unusual ones.", height=36 * (len(df) + 1) + 3)
for end in ("largest", "smallest"):
    items = ext["image"][end]
    st.markdown(f"**Images with the {end} {norm_col}**")
    thumbs = shape.thumbnails(loaded, [it["row"] for it in items])
    shown = [(t, it) for t, it in zip(thumbs, items) if t is not None]
    if shown:
        st.image([t for t, _ in shown], width=128,
                 caption=[f"{labels['sources'][it['row']]} · {it['norm']:.3f}"
                          for _, it in shown])
    else:
        st.caption("No thumbnails in this dataset: the images are listed instead.")
    df = shape.extremes_table(items, labels["sources"], "image")
    figures.table(df.rename(columns={"norm": norm_col}), key=f"images-{end}-{which}",
                  height=36 * (len(df) + 1) + 3)
