"""Separability of the two modalities (Double-Ellipsoid Sec. 4, Eq. 5, Figs. 2-3)."""

import pandas as pd
import plotly.graph_objects as go
import streamlit as st

from clipgeom import geometry
from dashboard import figures, shape, ui

loaded = ui.page_header("separability")

st.title("Separability of image and text embeddings")
st.caption("Levi & Gilboa, *The Double-Ellipsoid Geometry of CLIP*, Sec. 4: "
           "Sep(l) = |m_i(l) − m_t(l)| / √(var v_i(l) + var v_t(l)) (Eq. 5). "
           "Features with Sep > 1 act as modality tags.")

IMG, TXT = "#1f77b4", "#d62728"

with ui.user_errors():
    sep = shape.separability(loaded.fingerprint, loaded)

d = len(sep["sep"])
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

# ---------------------------------------------------------------- controls
ctl = figures.controls()
with ctl:
    default = sep["order"][:3]
    chosen = st.multiselect("Features to compare (histograms)", options=sep["order"],
                            default=default, key="sep_features",
                            format_func=lambda f: f"feature {f} (Sep {sep['sep'][f]:.2f})",
                            help="Ordered by separability, most separable first.")
    bins = st.slider("Histogram bins", 10, 200, 50, step=10, key="sep_bins")
    k_bar = st.slider("Features in the offset bar charts", 3, max(3, min(40, d)),
                      min(10, max(3, d)), key="sep_k_offset")

# ---------------------------------------------------------------- histograms
st.subheader("Per-feature histograms, image vs text (Fig. 2 left)")
if not chosen:
    st.info("Choose at least one feature in the sidebar.")
cols = st.columns(min(3, max(1, len(chosen))))
for n, f in enumerate(chosen):
    with ui.user_errors():
        h = shape.feature_hist(loaded.fingerprint, loaded, int(f), int(bins))
    centres = (h.edges[:-1] + h.edges[1:]) / 2
    width = float(h.edges[1] - h.edges[0])
    fig = go.Figure()
    for name, p, col in (("image", h.first, IMG), ("text", h.second, TXT)):
        fig.add_trace(go.Bar(x=centres, y=p, width=width, name=name, marker_color=col,
                             opacity=0.6,
                             hovertemplate=f"{name}<br>value=%{{x:.3f}}<br>"
                                           "probability=%{y:.4f}<extra></extra>"))
    fig.update_layout(barmode="overlay", title=f"feature {f}: KL = {h.kl:.3f}",
                      xaxis_title=f"v({f})", yaxis_title="probability")
    with cols[n % len(cols)]:
        figures.show(fig, f"Feature {f}: KL(image ‖ text) = {h.kl:.4f}, "
                          f"Sep = {sep['sep'][f]:.3f}. Double-Ellipsoid Fig. 2 (left).",
                     key=f"sep-hist-{f}", height=320)

# ---------------------------------------------------------------- sorted Sep
st.subheader("Sorted separability (Fig. 3 left)")
fig = go.Figure(go.Scatter(x=list(range(1, d + 1)), y=sep["sorted"], mode="lines+markers",
                           name="Sep(l)", customdata=sep["order"],
                           hovertemplate="rank %{x}<br>feature %{customdata}"
                                         "<br>Sep=%{y:.3f}<extra></extra>"))
fig.add_hline(y=1.0, line_dash="dash", annotation_text="Sep = 1")
fig.update_layout(xaxis_title="features, sorted by Sep", yaxis_title="Sep(l)")
figures.show(fig, f"{sep['n_above_1']} of {d} features have Sep > 1 (above the dashed "
                  "line). Double-Ellipsoid Fig. 3 (left), Eq. 5.",
             key="sep-sorted", height=340)

# ---------------------------------------------------------------- SVM scatter
st.subheader("The two most separable features and a linear SVM (Fig. 2 right)")
if svm is None:
    st.info("Separating by two features needs at least two features.")
else:
    f1, f2 = sep["top2"]
    cap = figures.MAX_SCATTER_POINTS // 2
    pts = shape.scatter_points(loaded.fingerprint, loaded, (f1, f2), cap)
    fig = go.Figure()
    for name, col in (("image", IMG), ("text", TXT)):
        p = pts[name]
        fig.add_trace(go.Scattergl(x=p["xy"][:, 0], y=p["xy"][:, 1], mode="markers",
                                   name=name, marker=dict(color=col, size=4, opacity=0.5),
                                   customdata=p["rows"],
                                   hovertemplate=f"{name} row %{{customdata}}<br>"
                                                 f"v({f1})=%{{x:.3f}}<br>v({f2})=%{{y:.3f}}"
                                                 "<extra></extra>"))
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
            f"{len(pts[m]['rows']):,} of {pts[m]['n_total']:,} {m} points" for m in sampled)
            + f" (at most {figures.MAX_SCATTER_POINTS:,} in all). The SVM used "
              f"{svm.n_used:,} rows per modality.")
    figures.show(fig, f"Features {f1} and {f2}; linear SVM accuracy {svm.accuracy:.1%}. "
                      "Double-Ellipsoid Fig. 2 (right).", key="sep-svm", height=460)

# ---------------------------------------------------------------- offsets
st.subheader("Features far from zero: largest |mean| / std (Fig. 3 middle, right)")
oc = st.columns(2)
for col, name, colour in ((oc[0], "image", IMG), (oc[1], "text", TXT)):
    rows = sep[f"offset_{name}"][:k_bar]
    df = pd.DataFrame(rows)
    fig = go.Figure(go.Bar(x=[f"f{f}" for f in df["feature"]], y=df["mean_over_std"],
                           marker_color=colour, customdata=df[["mean", "std"]].to_numpy(),
                           hovertemplate="%{x}<br>|mean|/std=%{y:.3f}<br>"
                                         "mean=%{customdata[0]:.3f}<br>"
                                         "std=%{customdata[1]:.3f}<extra></extra>"))
    fig.update_layout(xaxis_title="feature", yaxis_title="|mean| / std",
                      title=f"{name} embeddings")
    with col:
        figures.show(fig, f"{name.capitalize()}: the {len(df)} features with the largest "
                          "|m(l)| / σ(l). Double-Ellipsoid Fig. 3 "
                          f"({'middle' if name == 'image' else 'right'}).",
                     key=f"sep-offset-{name}", height=340)
        figures.table(df.rename(columns={"mean_over_std": "|mean|/std"}),
                      key=f"offset-features-{name}", height=36 * (len(df) + 1) + 3)

with st.expander("Sep(l) for every feature (table)"):
    figures.table(pd.DataFrame({"rank": range(1, d + 1), "feature": sep["order"],
                                "Sep": [float(sep["sep"][f]) for f in sep["order"]]}),
                  key="separability-per-feature", height=300)
