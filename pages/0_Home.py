"""Home: the dataset picker and the headline numbers, each linking to its page."""

import plotly.graph_objects as go
import streamlit as st

from dashboard import data, figures, ui

loaded = ui.page_header("home")

st.title("clipgeom: the geometry of CLIP embeddings before normalisation")
st.caption("After Levi & Gilboa, *The Double-Ellipsoid Geometry of CLIP* (ICML 2025), "
           "and related papers. Every number below comes from `python -m clipgeom report`.")

temperature = ui.temperature_input(loaded)
max_pairs = figures.controls().number_input("Pairs in the loss batch", min_value=10,
                                    max_value=25000, value=5000, step=500,
                                    help="Paired measures use one caption per image, on a "
                                         "seeded sample of at most this many pairs.")

with ui.user_errors():
    rep = data.cached_report(loaded.fingerprint, loaded, float(temperature), int(max_pairs))

c1, c2, c3, c4 = st.columns(4)
c1.metric("Images", f"{rep['n_images']:,}")
c2.metric("Captions", f"{rep['n_texts']:,}")
c3.metric("Pairs", f"{rep['n_pairs']:,}")
c4.metric("Dimension", rep["dim"])
st.markdown(f"**Model:** {loaded.model}  ·  **Input:** "
            + ("already L2-normalised (norm statistics describe the unit sphere)"
               if rep["normalized_input"] else "raw encoder output (not normalised)"))

st.subheader("Headline numbers")
PAGES = [("pages/1_Separability.py", "Separability →"),
         ("pages/2_Thin_shell_and_ellipsoid.py", "Thin shell & ellipsoid →"),
         ("pages/3_Alpha_shift_and_loss.py", "Alpha shift & loss →"),
         ("pages/4_Conformity.py", "Conformity →"),
         ("pages/5_Projections_and_isotropy.py", "Projections & isotropy →"),
         ("pages/6_Search_and_interpolation.py", "Search & interpolation →"),
         ("pages/7_Training_timeline.py", "Training timeline →"),
         ("pages/8_Upload.py", "Upload your own →")]
for row in (PAGES[:4], PAGES[4:]):
    for col, (page, label) in zip(st.columns(4), row):
        col.page_link(page, label=label)
sep = rep["separability"]
img, txt = rep["image"], rep["text"]


def fmt(x, spec=".3f"):
    return "n/a" if x is None else format(x, spec)


h1, h2, h3 = st.columns(3)
h1.metric("Separable features (Sep > 1, Eq. 5)", sep["n_above_1"],
          help="Features whose image and text means differ by more than their pooled std.")
h1.metric("SVM accuracy on the top two features (Fig. 2)", fmt(sep["svm_top2"]["accuracy"], ".1%"))
h2.metric("Image shell: μ_norm vs √E‖x‖² (Eq. 3-4)",
          f"{fmt(img['mean_norm'])} vs {fmt(img['rms_norm'])}",
          help=f"relative error {fmt(img['rms_rel_error'], '.2%')}")
h2.metric("Text shell: μ_norm vs √E‖x‖²", f"{fmt(txt['mean_norm'])} vs {fmt(txt['rms_norm'])}",
          help=f"relative error {fmt(txt['rms_rel_error'], '.2%')}")
h3.metric("‖m‖/‖σ‖ image · text (Sec. 4)",
          f"{fmt(img['mean_over_sigma'], '.2f')} · {fmt(txt['mean_over_sigma'], '.2f')}")
h3.metric("Conformity vs estimate, Pearson (Fig. 9)",
          f"{fmt(img['conformity']['pearson'], '.4f')} · {fmt(txt['conformity']['pearson'], '.4f')}")

if rep["loss"]:
    lo = rep["loss"]
    l1, l2, l3 = st.columns(3)
    l1.metric(f"CLIP loss on {lo['n_pairs_used']:,} pairs (Eq. 7-8)", fmt(lo["total"]),
              help=f"alignment {fmt(lo['alignment'])} + uniformity {fmt(lo['uniformity'])}")
    l2.metric("Top-1 retrieval image→text · text→image",
              f"{fmt(lo['accuracy_i2t'], '.1%')} · {fmt(lo['accuracy_t2i'], '.1%')}")
    argmins = {k: v["argmin"] for k, v in rep["alpha_sweep"].items()}
    l3.metric("α-shift argmin: image · text · both (Eq. 9, 14, 15)",
              " · ".join(f"{v:+.1f}" for v in argmins.values()),
              help="The α with the lowest loss when shifting that modality's mean.")

    st.subheader("Loss under an α shift of the means (Fig. 6)")
    fig = go.Figure()
    for mod, sw in rep["alpha_sweep"].items():
        fig.add_trace(go.Scatter(x=sw["alpha"], y=sw["total"], mode="lines+markers",
                                 name=f"{mod} shifted",
                                 hovertemplate="α=%{x:.1f}<br>loss=%{y:.4f}"))
    fig.update_layout(xaxis_title="α (v' = v − α m)", yaxis_title="CLIP loss")
    figures.show(fig, "Double-Ellipsoid Fig. 6 (top): the paper finds the minimum near α = 0 "
                      "for trained CLIP.", key="home-alpha", height=380)
else:
    st.info(f"Paired measures are unavailable: {rep['unavailable'].get('loss')}")

st.subheader("Separability per feature (Fig. 3, left)")
per = sorted(sep["per_feature"], reverse=True)
fig = go.Figure(go.Scatter(y=per, mode="lines", name="Sep(l)",
                           hovertemplate="rank %{x}<br>Sep=%{y:.3f}"))
fig.add_hline(y=1.0, line_dash="dash", annotation_text="Sep = 1")
fig.update_layout(xaxis_title="features, sorted", yaxis_title="Sep(l)")
figures.show(fig, "Double-Ellipsoid Fig. 3 (left): features sorted by Eq. 5; those above the "
                  "line act as modality tags.", key="home-sep", height=320)

with st.expander("The full report (JSON)"):
    st.json(rep, expanded=False)
