"""Thin shell and ellipsoid shape (Double-Ellipsoid Eq. 1-4, 6; Figs. 4-5, 14).

Captions and image sources are user strings: shown in tables (st.dataframe)
and plain-text galleries (figures.gallery), never as markdown."""

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

MODS = ("image", "text")
fp = loaded.fingerprint
n_items = int(min(loaded.image.shape[0], loaded.text.shape[0]))
d = int(loaded.image.shape[1])
b_lo, b_hi, b_default, b_step = shape.bins_range(n_items, lo=20, hi=200, default=60, step=10)
bins, view, norm_kind, k_ext = b_default, "box plots", "raw norm ‖v‖", 8
with figures.controls(), ui.section("Controls"):
    shape.clamp_state("shell_bins", b_lo, b_hi)
    bins = st.slider("Histogram bins", b_lo, b_hi, b_default, step=b_step, key="shell_bins",
                     help="At most one bin per item (per feature for the feature "
                          "histograms).")
    view = st.radio("First ten centred features as", ["box plots", "histograms"],
                    key="shell_feature_view", horizontal=True)
    norm_kind = st.radio("Extreme items by", ["raw norm ‖v‖", "centred norm ‖v − m‖"],
                         key="shell_extreme_kind")
    k_ext = st.slider("Items per list", 3, 30, 8, key="shell_extreme_k")
if n_items < d:
    st.info(f"Fewer items than features ({n_items:,} per modality, {d} features): the "
            "covariance (ODD, variances) rests on few items.")

# ---------------------------------------------------------------- metrics
with ui.section("Thin-shell statistics"):
    st.subheader("Thin-shell statistics (Eq. 1-4)")
    sh = shape.shell(fp, loaded, int(bins))
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
                    help=f"‖m‖ = {sh[mod]['mean_norm']:.4f}, ‖σ‖ = "
                         f"{sh[mod]['sigma_norm']:.4f}. Paper: 0.94 images, 1.03 text "
                         "(Sec. 4).")


def hist_fig(sh: dict, key: str, xtitle: str) -> go.Figure:
    fig = go.Figure()
    for mod in MODS:
        h = sh[mod]["norm_hist"][key] if key in ("centered", "raw") else sh[mod][key]
        centres = (h.edges[:-1] + h.edges[1:]) / 2
        fig.add_trace(go.Bar(x=centres, y=h.counts, width=float(h.edges[1] - h.edges[0]),
                             name=mod, opacity=0.6,
                             customdata=list(zip(h.edges[:-1], h.edges[1:])),
                             hovertemplate=f"{mod}<br>[%{{customdata[0]:.3f}}, "
                                           "%{customdata[1]:.3f})<br>count=%{y}"
                                           "<extra></extra>"))
    fig.update_layout(barmode="overlay", xaxis_title=xtitle, yaxis_title="count")
    return fig


# ---------------------------------------------------------------- norm histograms
with ui.section("Norm histograms"):
    st.subheader("Norm histograms (Fig. 4 bottom)")
    sh = shape.shell(fp, loaded, int(bins))
    c1, c2 = st.columns(2)
    with c1:
        figures.show(hist_fig(sh, "centered", "‖v − m‖"),
                     "‖v − m‖ per modality, from 0: the empty region near 0 is the thin "
                     "shell — no embedding lies near its modality's mean. "
                     "Double-Ellipsoid Fig. 4 (bottom), Eq. 1-4.",
                     key="shell-centred-norms", height=360)
    with c2:
        figures.show(hist_fig(sh, "raw", "‖v‖"),
                     "Raw norms ‖v‖ (distance from the origin, before L2 normalisation). "
                     "Double-Ellipsoid Sec. 3.2.", key="shell-raw-norms", height=360)

# ---------------------------------------------------------------- first ten features
with ui.section("First ten centred features"):
    st.subheader("The first ten mean-subtracted features (Fig. 4 top)")
    cap = figures.MAX_SCATTER_POINTS // 2
    cf = shape.centered_first_features(fp, loaded, 10, cap)
    if any(cf[m]["n_shown"] < cf[m]["n_total"] for m in MODS):
        st.caption("Drawn from a seeded sample: " + ", ".join(
            f"{cf[m]['n_shown']:,} of {cf[m]['n_total']:,} {m} rows" for m in MODS) + ".")
    feats = cf["image"]["features"]
    if view == "box plots":
        fig = go.Figure()
        for mod in MODS:
            vals = cf[mod]["values"]
            x = [f"f{f}" for f in feats for _ in range(vals.shape[0])]
            fig.add_trace(go.Box(x=x, y=vals.T.ravel(), name=mod, boxpoints=False,
                                 line=dict(color=figures.colour(mod)),
                                 hovertemplate=f"{mod} %{{x}}<br>v − m = %{{y:.3f}}"
                                               "<extra></extra>"))
        fig.update_layout(boxmode="group", xaxis_title="feature", yaxis_title="v(l) − m(l)")
    else:
        ncol = 5
        nrow = max(1, (len(feats) + ncol - 1) // ncol)
        nbins = int(max(1, min(40, cf["image"]["n_shown"], cf["text"]["n_shown"])))
        fig = make_subplots(rows=nrow, cols=ncol,
                            subplot_titles=[f"feature {f}" for f in feats])
        for j, f in enumerate(feats):
            for mod in MODS:
                fig.add_trace(go.Histogram(x=cf[mod]["values"][:, j], name=mod, opacity=0.6,
                                           nbinsx=nbins, histnorm="probability",
                                           showlegend=(j == 0), legendgroup=mod,
                                           hovertemplate=f"{mod}, feature {f}<br>v − m = "
                                                         "%{x}<br>p=%{y:.3f}<extra></extra>"),
                              row=j // ncol + 1, col=j % ncol + 1)
        fig.update_layout(barmode="overlay")
    figures.show(fig, "Each centred feature is concentrated around 0 with its own spread; "
                      "Double-Ellipsoid Fig. 4 (top).", key="shell-first-features",
                 height=420)

# ---------------------------------------------------------------- ellipsoid
with ui.section("Ellipsoid: feature variances and tilt"):
    st.subheader("Ellipsoid: feature variances and tilt (Fig. 5)")
    sh = shape.shell(fp, loaded, int(bins))
    fbins = sh["image"]["feature_bins"]
    if fbins < int(bins):
        st.caption(f"{fbins} bins for the per-feature histograms: one value per feature "
                   f"({d} features).")
    c1, c2 = st.columns(2)
    with c1:
        vmax = {m: float(sh[m]["variance"][0]) for m in MODS}
        figures.show(hist_fig(sh, "variance_hist", "feature variance σ²(l)"),
                     "Histogram of per-feature variances: a long tail, not a sphere "
                     f"(largest: image {vmax['image']:.4f}, text {vmax['text']:.4f}). "
                     "Double-Ellipsoid Fig. 5 (left).", key="shell-variance", height=360)
    with c2:
        fig = hist_fig(sh, "odd_hist", "ODD(l) = Σ_{k≠l} |C_lk| / C_ll")
        fig.add_vline(x=1.0, line_dash="dash", annotation_text="ODD = 1")
        figures.show(fig, "Off-diagonal dominance per feature: values above 1 mean the "
                          "ellipsoid is tilted relative to the axes. Double-Ellipsoid Fig. 5 "
                          "(right), Eq. 6.", key="shell-odd", height=360)

# ---------------------------------------------------------------- extremes
which = "raw" if norm_kind.startswith("raw") else "centered"
norm_col = "‖v‖" if which == "raw" else "‖v − m‖"
with ui.section("Captions with extreme norms"):
    st.subheader("Items with the largest and smallest norms (Fig. 14)")
    ext = shape.caption_extremes(fp, loaded, which, int(k_ext))
    c1, c2 = st.columns(2)
    for col, end in ((c1, "largest"), (c2, "smallest")):
        with col:
            st.markdown(f"**Distinct captions with the {end} {norm_col}**")
            df = ext[end].rename(columns={"norm": norm_col,
                                          "rows": "rows with this caption"})
            figures.table(df, key=f"captions-{end}-{which}",
                          caption="Double-Ellipsoid Fig. 14: the largest-norm captions tend "
                                  "to be the unusual ones. Each distinct caption once, at its "
                                  "most extreme row; identical captions share one embedding.",
                          height=36 * (len(df) + 1) + 3)

with ui.section("Images with extreme norms"):
    ext = shape.extremes(fp, loaded, which, int(k_ext))
    labels = shape.item_labels(fp, loaded)
    for end in ("largest", "smallest"):
        items = ext["image"][end]
        st.markdown(f"**Images with the {end} {norm_col}**")
        thumbs = shape.thumbnails(loaded, [it["row"] for it in items])
        shown = [(t, it) for t, it in zip(thumbs, items) if t is not None]
        if shown:
            figures.gallery([(t, f"{labels['sources'][it['row']]} · {it['norm']:.3f}")
                             for t, it in shown], columns=min(8, max(4, len(shown))))
        else:
            st.caption("No thumbnails in this dataset: the images are listed instead.")
        df = shape.extremes_table(items, labels["sources"], "image")
        figures.table(df.rename(columns={"norm": norm_col}), key=f"images-{end}-{which}",
                      height=36 * (len(df) + 1) + 3)
