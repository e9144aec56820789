"""Separability of the two modalities (Double-Ellipsoid Sec. 4, Eq. 5, Figs. 2-3)."""

import pandas as pd
import plotly.graph_objects as go
import streamlit as st

from clipgeom import geometry
from dashboard import figures, selection, shape, ui

loaded = ui.page_header("separability")

st.title("Separability of image and text embeddings")
st.caption("Levi & Gilboa, *The Double-Ellipsoid Geometry of CLIP*, Sec. 4: "
           "Sep(l) = |m_i(l) − m_t(l)| / √(var v_i(l) + var v_t(l)) (Eq. 5). "
           "Features with Sep > 1 act as modality tags.")

fp = loaded.fingerprint
d = int(loaded.image.shape[1])
n_items = int(min(loaded.image.shape[0], loaded.text.shape[0]))
if n_items < d:
    st.info(f"Fewer items than features ({loaded.image.shape[0]:,} images, "
            f"{loaded.text.shape[0]:,} captions, {d} features): the per-feature "
            "statistics rest on few items, and a classifier on all features separates "
            "almost any such set (read the all-feature accuracy with care).")

# The page's numbers are the first stage of the dataset's report: read from the
# stored report (computed and stored once, its progress bar drawn here, when none is).
with ui.section("Separability report"):
    shape.separability(loaded)

# ---------------------------------------------------------------- controls
chosen, k_bar = [], min(10, d)
bins_lo, bins_hi, bins_default, bins_step = shape.bins_range(n_items, lo=10, hi=200,
                                                             default=50, step=10)
bins = bins_default
with figures.controls(), ui.section("Controls"):
    sep = shape.separability(loaded)
    chosen = st.multiselect("Features to compare (histograms)", options=sep["order"],
                            default=sep["order"][:3], key="sep_features",
                            format_func=lambda f: f"feature {f} (Sep {sep['sep'][f]:.2f})",
                            help="Ordered by separability, most separable first.")
    shape.clamp_state("sep_bins", bins_lo, bins_hi)
    bins = st.slider("Histogram bins", bins_lo, bins_hi, bins_default, step=bins_step,
                     key="sep_bins", help="At most one bin per item of the smaller modality.")
    if d > 3:
        shape.clamp_state("sep_k_offset", 3, min(40, d))
        k_bar = st.slider("Features in the offset bar charts", 3, min(40, d), min(10, d),
                          key="sep_k_offset")

# ---------------------------------------------------------------- metrics
with ui.section("Separability summary"):
    sep = shape.separability(loaded)
    c1, c2, c3, c4 = st.columns(4)
    c1.metric("Separable features (Sep > 1, Eq. 5)", f"{sep['n_above_1']:,}",
              help=f"out of {d} features")
    c2.metric("Largest Sep(l)", f"{sep['sorted'][0]:.3f}" if d else "n/a",
              help=f"feature {sep['order'][0]}" if d else None)
    svm = sep["svm"]
    c3.metric("SVM accuracy, top two features (Fig. 2)",
              f"{svm.accuracy:.1%}" if svm is not None else "n/a",
              help="Linear SVM on the two most separable features, on the fitted rows.")
    lin = sep["linear"]
    c4.metric("Linear separability, all features",
              "n/a" if lin != lin else f"{lin:.1%}",
              help="Held-out accuracy of logistic regression image vs text on all features "
                   "(25% test split).")
    if lin != lin:
        st.caption("Linear separability on all features needs at least 4 items per "
                   "modality.")

# ---------------------------------------------------------------- histograms
with ui.section("Per-feature histograms"):
    st.subheader("Per-feature histograms, image vs text (Fig. 2 left)")
    sep = shape.separability(loaded)
    if not chosen:
        st.info("Choose at least one feature in the sidebar.")
    cols = st.columns(min(3, max(1, len(chosen))))
    for n, f in enumerate(chosen):
        with cols[n % len(cols)], ui.section(f"feature {f}"):
            h = shape.feature_hist(fp, loaded, int(f), int(bins))
            centres = (h.edges[:-1] + h.edges[1:]) / 2
            width = float(h.edges[1] - h.edges[0])
            fig = go.Figure()
            for name, p in (("image", h.first), ("text", h.second)):
                fig.add_trace(go.Bar(x=centres, y=p, width=width, name=name, opacity=0.6,
                                     hovertemplate=f"{name}<br>value=%{{x:.3f}}<br>"
                                                   "probability=%{y:.4f}<extra></extra>"))
            fig.update_layout(barmode="overlay", title=f"feature {f}: KL = {h.kl:.3f}",
                              xaxis_title=f"v({f})", yaxis_title="probability")
            figures.show(fig, f"Feature {f}: KL(image ‖ text) = {h.kl:.4f}, "
                              f"Sep = {sep['sep'][f]:.3f}; {len(centres)} bins. "
                              "Double-Ellipsoid Fig. 2 (left).",
                         key=f"sep-hist-{f}", height=320)

# ---------------------------------------------------------------- sorted Sep
with ui.section("Sorted separability"):
    st.subheader("Sorted separability (Fig. 3 left)")
    sep = shape.separability(loaded)
    fig = go.Figure(go.Scatter(x=list(range(1, d + 1)), y=sep["sorted"],
                               mode="lines+markers", name="Sep(l)", customdata=sep["order"],
                               line=dict(color=figures.colour(2)),
                               marker=dict(color=figures.colour(2)),
                               hovertemplate="rank %{x}<br>feature %{customdata}"
                                             "<br>Sep=%{y:.3f}<extra></extra>"))
    fig.add_hline(y=1.0, line_dash="dash", annotation_text="Sep = 1")
    fig.update_layout(xaxis_title="features, sorted by Sep", yaxis_title="Sep(l)")
    figures.show(fig, f"{sep['n_above_1']} of {d} features have Sep > 1 (above the dashed "
                      "line). Double-Ellipsoid Fig. 3 (left), Eq. 5.",
                 key="sep-sorted", height=340)

# ---------------------------------------------------------------- SVM scatter
with ui.section("Top two features and a linear SVM"):
    st.subheader("The two most separable features and a linear SVM (Fig. 2 right)")
    sep = shape.separability(loaded)
    svm = sep["svm"]
    if svm is None:
        st.info("Separating by two features needs at least two features.")
    else:
        f1, f2 = sep["top2"]
        cap = figures.MAX_SCATTER_POINTS // 2
        pts = shape.scatter_points(fp, loaded, (f1, f2), cap)
        fig = go.Figure()
        for name in ("image", "text"):
            p = pts[name]
            # An item scatter: named by modality, dataset row index in customdata.
            fig.add_trace(go.Scattergl(x=p["xy"][:, 0], y=p["xy"][:, 1], mode="markers",
                                       name=name, marker=dict(size=4, opacity=0.5),
                                       customdata=p["rows"],
                                       hovertemplate=f"{name} row %{{customdata}}<br>"
                                                     f"v({f1})=%{{x:.3f}}<br>"
                                                     f"v({f2})=%{{y:.3f}}<extra></extra>"))
        allx = [pts[m]["xy"][:, 0] for m in ("image", "text")]
        ally = [pts[m]["xy"][:, 1] for m in ("image", "text")]
        xr = (min(a.min() for a in allx), max(a.max() for a in allx))
        yr = (min(a.min() for a in ally), max(a.max() for a in ally))
        bx, by = geometry.boundary_line(svm.weights, svm.bias, xr, yr)
        fig.add_trace(go.Scatter(x=bx, y=by, mode="lines", name="SVM boundary",
                                 line=dict(color="black", dash="dash"),
                                 hovertemplate=f"SVM boundary (accuracy {svm.accuracy:.1%})"
                                               "<extra></extra>"))
        fig.update_xaxes(range=list(xr), title=f"feature {f1}")
        fig.update_yaxes(range=list(yr), title=f"feature {f2}")
        sampled = [m for m in ("image", "text") if len(pts[m]["rows"]) < pts[m]["n_total"]]
        if sampled:
            st.caption("Drawing a seeded sample: " + ", ".join(
                f"{len(pts[m]['rows']):,} of {pts[m]['n_total']:,} {m} points"
                for m in sampled)
                + f" (at most {figures.MAX_SCATTER_POINTS:,} in all). The SVM used "
                  f"{svm.n_used:,} rows per modality.")
        if svm.n_used < 10:
            st.caption(f"The SVM is fitted on only {svm.n_used} rows per modality.")
        selection.chart(fig, f"Features {f1} and {f2}; linear SVM accuracy {svm.accuracy:.1%}. "
                             "Double-Ellipsoid Fig. 2 (right).", key="sep-svm", height=460,
                        loaded=loaded)

# ---------------------------------------------------------------- offsets
with ui.section("Features far from zero"):
    st.subheader("Features far from zero: largest |mean| / std (Fig. 3 middle, right)")
    oc = st.columns(2)
    for col, name in zip(oc, ("image", "text")):
        with col, ui.section(f"{name} offsets"):
            df = pd.DataFrame(shape.offsets(fp, loaded, name, int(k_bar)))
            fig = go.Figure(go.Bar(x=[f"f{f}" for f in df["feature"]], y=df["mean_over_std"],
                                   name=name, customdata=df[["mean", "std"]].to_numpy(),
                                   hovertemplate="%{x}<br>|mean|/std=%{y:.3f}<br>"
                                                 "mean=%{customdata[0]:.3f}<br>"
                                                 "std=%{customdata[1]:.3f}<extra></extra>"))
            fig.update_layout(xaxis_title="feature", yaxis_title="|mean| / std",
                              title=f"{name} embeddings")
            figures.show(fig, f"{name.capitalize()}: the {len(df)} features with the largest "
                              "|m(l)| / σ(l). Double-Ellipsoid Fig. 3 "
                              f"({'middle' if name == 'image' else 'right'}).",
                         key=f"sep-offset-{name}", height=340)
            figures.table(df.rename(columns={"mean_over_std": "|mean|/std"}),
                          key=f"offset-features-{name}", height=36 * (len(df) + 1) + 3)

with st.expander("Sep(l) for every feature (table)"), ui.section("Sep table"):
    sep = shape.separability(loaded)
    figures.table(pd.DataFrame({"rank": range(1, d + 1), "feature": sep["order"],
                                "Sep": [float(sep["sep"][f]) for f in sep["order"]]}),
                  key="separability-per-feature", height=300)
