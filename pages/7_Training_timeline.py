"""Training timeline: the double ellipsoid forming during training, from the
snapshots a dataset carries (the bundled demo records six, step 0 included)."""

import html

import numpy as np
import plotly.graph_objects as go
import streamlit as st
from plotly.subplots import make_subplots

from clipgeom.safety import plain_markdown
from dashboard import data, figures, snapshots, ui

loaded = ui.page_header("training timeline")

st.title("Training timeline")
st.caption("Raw embeddings of the same held-out pairs at several training steps (step 0 = "
           "random initialisation), measured with the report's own functions: watch the "
           "modalities separate (Eq. 5), the shells form (Eq. 3-4), the means move off the "
           "origin and conformity track its estimate (Def. 2).")

fp = loaded.fingerprint
with ui.user_errors():                       # part of opening the dataset
    steps = snapshots.steps(fp, loaded.name) if loaded.name != data.SYNTHETIC else []
if not steps:
    st.info(f"Dataset {plain_markdown(repr(loaded.name))} carries no training snapshots. "
            "The bundled demo does (`python -m clipgeom demo train` records them); pick it "
            "in the sidebar.")
    st.stop()


def _colour(col: str, j: int) -> dict:
    """Modality series are coloured by figures.show from their names (image blue,
    text red); other series take the palette's later colours, never blue/red."""
    return {} if figures.modality_of(col) else {"color": figures.colour(2 + j)}


# ------------------------------------------------------------------ across steps
with ui.section("Across training"):
    st.subheader("Across training")
    tab = snapshots.table(fp, loaded.name)
    quality = snapshots.quality(fp, loaded.name)
    if quality:
        tab["held-out i2t caption true"] = [quality.get(s, {}).get("caption_true_i2t", np.nan)
                                            for s in tab["step"]]
        tab["held-out t2i image true"] = [quality.get(s, {}).get("image_true_t2i", np.nan)
                                          for s in tab["step"]]
    panels = [("separable features (Sep > 1)", ["separable features (Sep > 1)"]),
              ("modality gap: cos(m_image, m_text)", ["cos(m_image, m_text)"]),
              ("‖m‖/‖σ‖ (Property 5)", ["image ||m||/||sigma||", "text ||m||/||sigma||"]),
              ("shell thickness: std / radius of ‖v − m‖", ["image shell std / radius",
                                                           "text shell std / radius"]),
              ("conformity vs estimate: Pearson", ["image conformity Pearson",
                                                   "text conformity Pearson"]),
              ("retrieval", [c for c in tab.columns if "retrieval" in c or "held-out" in c])]
    fig = make_subplots(rows=2, cols=3, subplot_titles=[p[0] for p in panels],
                        horizontal_spacing=0.07, vertical_spacing=0.16)
    x = tab["step"].to_numpy()
    others = 0
    for k, (_, cols) in enumerate(panels):
        for col in cols:
            colour = _colour(col, others)
            others += 0 if figures.modality_of(col) else 1
            fig.add_trace(go.Scatter(x=x, y=tab[col], mode="lines+markers", name=col,
                                     line=dict(**colour), marker=dict(**colour),
                                     hovertemplate=f"{col}<br>step %{{x}}: %{{y:.4f}}"
                                                   "<extra></extra>"),
                          row=k // 3 + 1, col=k % 3 + 1)
    fig.update_xaxes(title_text="training step", row=2)
    # At initialisation the image tower's outputs share one direction (a narrow cone):
    # ||m||/||sigma|| starts near 100 and falls by two orders of magnitude.
    fig.update_yaxes(type="log", dtick=1, row=1, col=3)     # ticks at powers of ten
    fig.update_layout(legend=dict(orientation="h", y=-0.15))
    figures.show(fig, "Geometry of the held-out pairs at each snapshot: Double-Ellipsoid "
                      "Eq. 5 (Sep), Property 5 (‖m‖/‖σ‖), Eq. 3-4 (thin shell), Def. 2 "
                      "(conformity estimate); retrieval is paired top-1 among the held-out "
                      "pairs. Image series blue, text series red.",
                 key="timeline-summary", height=560)
    figures.table(tab, key="timeline", caption="One row per snapshot step.")

# ------------------------------------------------------------------ one step
with ui.section("One step"):
    st.subheader("One step")
    url_step = ui.url_value("timeline_step", steps[-1], int)
    step = st.select_slider("Training step", options=steps,
                            value=url_step if url_step in steps else steps[-1],
                            key="timeline_step")
    ui.url_keep("timeline_step", step)           # a copied link reopens this step
    v = snapshots.views(fp, loaded.name, int(step))
    proj = v["proj"]
    n_pairs = len(proj.image_coords)
    if n_pairs < 50:
        st.caption(f"Only {n_pairs} snapshot pairs: the distributions below rest on few "
                   "items.")
    left, right = st.columns(2)
    with left, ui.section("Joint SVD"):
        fig = go.Figure()
        n_join = min(100, n_pairs)
        xs, ys = [], []
        for i in range(n_join):
            xs += [proj.image_coords[i, 0], proj.text_coords[i, 0], None]
            ys += [proj.image_coords[i, 1], proj.text_coords[i, 1], None]
        fig.add_trace(go.Scattergl(x=xs, y=ys, mode="lines", name=f"pairs (first {n_join})",
                                   line=dict(width=0.5, color="rgba(120,120,120,0.4)"),
                                   hoverinfo="skip"))
        caps = snapshots.captions(fp, loaded.name)
        for mod, c in (("image", proj.image_coords), ("text", proj.text_coords)):
            # captions are user data: escaped so plotly shows them, not their tags
            label = [f"{mod} of pair {i}" + (f": {html.escape(caps[i])}"
                                             if caps and i < len(caps) else "")
                     for i in range(len(c))]
            # customdata: the row of each point in the snapshot arrays (pair i)
            fig.add_trace(go.Scattergl(x=c[:, 0], y=c[:, 1], mode="markers", name=mod,
                                       marker=dict(size=4, opacity=0.6), text=label,
                                       customdata=np.arange(len(c)),
                                       hovertemplate="%{text}<br>(%{x:.3f}, %{y:.3f})"
                                                     "<extra></extra>"))
        fig.update_layout(xaxis_title="SVD 1", yaxis_title="SVD 2")
        figures.show(fig, f"Step {step}: one uncentred SVD of both modalities' normalised "
                          "embeddings (isotropy paper Fig. 8), lines joining pairs: the cone "
                          "and the modality gap.", key="timeline-svd", height=400)
    with right, ui.section("Norms"):
        fig = figures.histograms(v["norms"], x_title="‖v‖ (raw norm)", symbol="‖v‖",
                                 nbins=min(60, max(5, n_pairs // 2)))
        figures.show(fig, f"Step {step}: raw norms per modality (Double-Ellipsoid Fig. 4).",
                     key="timeline-norms", height=400)
    left, right = st.columns(2)
    with left, ui.section("Separability"):
        sep = v["sep"]
        fig = go.Figure(go.Scatter(x=np.arange(1, len(sep) + 1), y=sep, mode="lines",
                                   name="Sep(l), sorted", line=dict(color=figures.colour(2)),
                                   hovertemplate="rank %{x}<br>Sep=%{y:.3f}<extra></extra>"))
        fig.add_hline(y=1.0, line_dash="dash", annotation_text="Sep = 1")
        fig.update_layout(xaxis_title="feature rank", yaxis_title="Sep(l) (Eq. 5)")
        figures.show(fig, f"Step {step}: sorted separability, {int(np.sum(sep > 1))} features "
                          "above 1 (Double-Ellipsoid Fig. 3 left).", key="timeline-sep",
                     height=360)
    with right, ui.section("Conformity"):
        fig = figures.histograms(v["conformity"], x_title="exact conformity (Def. 1)",
                                 symbol="C", nbins=min(60, max(5, n_pairs // 2)))
        figures.show(fig, f"Step {step}: conformity distributions (Double-Ellipsoid Fig. 10).",
                     key="timeline-conformity", height=360)
