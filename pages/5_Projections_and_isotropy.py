"""Projections & isotropy (Tyshchuk et al., "On Isotropy of Multimodal Embeddings";
intra-modal misalignment supplement). Draws only: numbers come from clipgeom."""

import numpy as np
import plotly.graph_objects as go
import streamlit as st

from clipgeom import projection
from dashboard import figures, proj, ui

loaded = ui.page_header("projections & isotropy")

st.title("Projections & isotropy")
st.caption("After Tyshchuk et al., *On Isotropy of Multimodal Embeddings* (Figs. 2-4, 8-13, "
           "Table 2), and the intra-modal misalignment supplement.")

ISO = "Tyshchuk et al."
COLOURS = {"image": "#1f77b4", "text": "#d62728"}
fp = loaded.fingerprint

ctl = figures.controls()
ctl.markdown("**Joint projection**")
centred = ctl.toggle("Centre before the SVD", value=False, key="proj_center",
                     help="Off: the uncentred SVD shows the cone (Fig. 2); on: PCA (Fig. 3).")
normalize = ctl.toggle("L2-normalise rows first", value=True, key="proj_normalize",
                       help="The paper normalises embeddings before projecting.")
labels_available = proj.item_text(fp, loaded)["labels"] is not None
colour_opts = ["modality", "conformity", "norm"] + (["label"] if labels_available else [])
colour_by = ctl.selectbox("Colour by", colour_opts, key="proj_colour")
n_lines = ctl.slider("Pair lines", 0, 300, 300, step=50, key="proj_lines",
                     help="Thin lines join this many sampled image-text pairs (Fig. 8).")


def sample_note(n_total: int, idx: np.ndarray, what: str) -> None:
    if idx.shape[0] < n_total:
        st.caption(f"Showing a seeded sample of {idx.shape[0]:,} of {n_total:,} {what} "
                   f"(more than {figures.MAX_SCATTER_POINTS:,} points).")


def hover_texts(kind: str, rows: np.ndarray) -> list[str]:
    info = proj.item_text(fp, loaded)
    src = info["image_ids"] if kind == "image" else info["captions"]
    if src is None or len(src) <= int(rows.max(initial=0)):
        return [f"{kind} row {r}" for r in rows]
    return [f"{kind} row {r}: {src[r]}" for r in rows]


with ui.user_errors():
    iso = proj.isotropy(fp, loaded)
    jp = proj.joint(fp, loaded, bool(centred), bool(normalize))

# ---- isotropy metrics --------------------------------------------------------
st.subheader("Isotropy (Eq. 1-2, Table 1)")
m1, m2, m3, m4 = st.columns(4)
m1.metric("I1 image (min Z / max Z)", f"{iso['image']['I1']:.6g}",
          help="1 = isotropic; near 0 = a narrow cone.")
m2.metric("I1 text", f"{iso['text']['I1']:.6g}")
m3.metric("I2 image (std Z / mean Z)", f"{iso['image']['I2']:.6g}",
          help="0 = isotropic.")
m4.metric("I2 text", f"{iso['text']['I2']:.6g}")

# ---- joint SVD projection ----------------------------------------------------
st.subheader(("Centred" if centred else "Uncentred") + " joint SVD projection (Fig. 8)")
n_img, n_txt = jp["image"].shape[0], jp["text"].shape[0]
idx_i = projection.sample_rows(n_img, figures.MAX_SCATTER_POINTS, 0)
idx_t = projection.sample_rows(n_txt, figures.MAX_SCATTER_POINTS, 1)
sample_note(n_img, idx_i, "images")
sample_note(n_txt, idx_t, "captions")

fig = go.Figure()
n_pairs = loaded.pair_image_rows.shape[0]
if n_lines and n_pairs:
    pidx = projection.sample_rows(n_pairs, min(n_lines, n_pairs) if n_pairs > 1 else None, 2)
    a = jp["image"][loaded.pair_image_rows[pidx]]
    b = jp["text"][loaded.pair_text_rows[pidx]]
    xs = np.column_stack([a[:, 0], b[:, 0], np.full(len(pidx), np.nan)]).ravel()
    ys = np.column_stack([a[:, 1], b[:, 1], np.full(len(pidx), np.nan)]).ravel()
    fig.add_trace(go.Scattergl(x=xs, y=ys, mode="lines", name=f"{len(pidx)} pairs",
                               line=dict(width=0.5, color="rgba(120,120,120,0.35)"),
                               hoverinfo="skip"))
with ui.user_errors():
    colours = (proj.colour_values(fp, loaded, colour_by)
               if colour_by in ("conformity", "norm") else None)
labels = proj.item_text(fp, loaded)["labels"] if colour_by == "label" else None
for kind, idx, symbol in (("image", idx_i, "circle"), ("text", idx_t, "x")):
    xy = jp[kind][idx]
    marker = dict(size=4, symbol=symbol, opacity=0.7)
    if colours is not None:
        marker.update(color=colours[kind][idx], colorscale="Viridis", showscale=kind == "image",
                      colorbar=dict(title=colour_by))
    elif labels is not None and kind == "image":
        codes = {v: c for c, v in enumerate(sorted(set(labels)))}
        marker.update(color=[codes[labels[r]] for r in idx], colorscale="Turbo")
    else:
        marker.update(color=COLOURS[kind])
    hov = hover_texts(kind, idx)
    if labels is not None and kind == "image":
        hov = [f"{h}<br>label: {labels[r]}" for h, r in zip(hov, idx)]
    fig.add_trace(go.Scattergl(x=xy[:, 0], y=xy[:, 1], mode="markers", name=kind,
                               marker=marker, text=hov,
                               hovertemplate="%{text}<br>(%{x:.3f}, %{y:.3f})<extra></extra>"))
fig.update_layout(xaxis_title="component 1", yaxis_title="component 2")
figures.show(fig, f"{ISO} Fig. 8 ({'centred, Fig. 3' if centred else 'uncentred, Fig. 2'}): "
             "one SVD of image and text rows stacked; lines join paired rows.",
             key="joint-svd", height=520)

sv = jp["singular_values"]
fig = go.Figure(go.Scatter(x=np.arange(1, sv.shape[0] + 1), y=sv, mode="lines+markers",
                           name="singular values", marker=dict(size=4),
                           text=[f"{r:.2%} of the {'variance' if centred else 'second moment'}"
                                 for r in jp["ratio"]],
                           hovertemplate="σ%{x}=%{y:.4g}<br>%{text}<extra></extra>"))
fig.update_layout(yaxis_type="log", xaxis_title="index", yaxis_title="singular value (log)")
figures.show(fig, f"{ISO} Fig. 4: singular spectrum of the stacked "
             f"{'centred' if centred else 'uncentred'} rows.", key="spectrum", height=340)

# ---- UMAP --------------------------------------------------------------------
st.subheader("UMAP (Figs. 14-15)")
per_mod = st.number_input("Rows per modality for UMAP", min_value=20, max_value=20_000,
                          value=2000, step=500, key="umap_rows")
if st.button("Compute UMAP", key="umap_go"):
    st.session_state["umap_for"] = (fp, int(per_mod))
if st.session_state.get("umap_for") == (fp, int(per_mod)):
    bar = st.progress(0.0, text="UMAP…")
    with ui.user_errors():
        um = proj.umap(fp, loaded, int(per_mod),
                       _progress=lambda f, t: bar.progress(min(max(f, 0.0), 1.0), text=t))
    bar.empty()
    fig = go.Figure()
    for kind in ("image", "text"):
        fig.add_trace(go.Scattergl(x=um[kind][:, 0], y=um[kind][:, 1], mode="markers",
                                   name=kind, marker=dict(size=4, color=COLOURS[kind]),
                                   text=hover_texts(kind, um[kind + "_rows"]),
                                   hovertemplate="%{text}<extra></extra>"))
    figures.show(fig, f"{ISO} Figs. 14-15: joint UMAP (cosine) of seeded samples of "
                 f"{um['image'].shape[0]:,} images and {um['text'].shape[0]:,} captions.",
                 key="umap", height=480)
else:
    st.caption("UMAP takes tens of seconds the first time (then it is read from the cache): "
               "press the button to compute it.")

# ---- transform lab -----------------------------------------------------------
st.subheader("Transform lab (Sec. 4.2-4.3, Table 2, Figs. 9-13)")
d_lab = loaded.image.shape[1]
c1, c2, c3 = st.columns(3)
method = c1.selectbox("Transform", list(proj.METHOD_LABELS), key="lab_method",
                      format_func=proj.METHOD_LABELS.get)
k = c2.slider("Whitening k", 2, d_lab, min(d_lab, 32), key="lab_k",
              help="Number of whitened principal directions (used by 'whiten').")
train_fraction = c3.slider("Train fraction", 0.5, 0.9, 0.8, step=0.05, key="lab_train")
temperature = loaded.default_temperature     # the model's own τ where recorded
if loaded.pair_image_rows.shape[0] < 4:
    st.info("The transform lab needs at least 4 image-caption pairs.")
else:
    with ui.user_errors():
        table = proj.alignment_table(loaded, method, int(k), float(train_fraction), temperature)
        res = proj.alignment(fp, loaded, method, int(k), float(train_fraction), temperature)
        base = proj.alignment(fp, loaded, "none", int(k), float(train_fraction), temperature)
        tag = f"{method}-{k}-{train_fraction}"
        before = proj.joint_of(fp, f"raw-{train_fraction}", res["image_raw"], res["text_raw"])
        after = proj.joint_of(fp, tag, res["image_test"], res["text_test"])
    # explicit height: figures.table's default (None) is rejected by this Streamlit version
    figures.table(table, key="table2", height=36 * (len(table) + 1) + 4,
                  caption=f"{ISO} Table 2: CLIP loss (τ = {temperature}) and top-1 retrieval on "
                          f"the train and test splits, transforms fitted on train; pairs: a "
                          f"seeded sample of at most {proj.MAX_LAB_PAIRS:,}.")
    test_rows = res["test_image_rows"]
    cols = st.columns(2)
    for col, (title, p) in zip(cols, (("before (raw)", before),
                                       (f"after {proj.METHOD_LABELS[method]}", after))):
        with col:
            fig = go.Figure()
            for kind in ("image", "text"):
                idx = projection.sample_rows(p[kind].shape[0], figures.MAX_SCATTER_POINTS, 0)
                fig.add_trace(go.Scattergl(
                    x=p[kind][idx, 0], y=p[kind][idx, 1], mode="markers", name=kind,
                    marker=dict(size=4, color=COLOURS[kind]),
                    text=[f"test pair {i} ({kind} of image row {test_rows[i]})" for i in idx],
                    hovertemplate="%{text}<extra></extra>"))
            fig.update_layout(title=title)
            figures.show(fig, f"{ISO} Figs. 12-13: joint uncentred SVD of the test split, "
                         f"{title}.", key=f"lab-{'before' if p is before else 'after'}",
                         height=380)
    cols = st.columns(2)
    for col, (title, r) in zip(cols, (("before (raw)", base),
                                       (f"after {proj.METHOD_LABELS[method]}", res))):
        with col:
            fig = go.Figure()
            fig.add_trace(go.Histogram(x=r["pos"], name="positive pairs", opacity=0.6,
                                       histnorm="probability density", nbinsx=60,
                                       hovertemplate="cos=%{x}<br>density=%{y:.3f}"))
            fig.add_trace(go.Histogram(x=r["rand"], name="random pairs", opacity=0.6,
                                       histnorm="probability density", nbinsx=60,
                                       hovertemplate="cos=%{x}<br>density=%{y:.3f}"))
            fig.update_layout(barmode="overlay", title=title, xaxis_title="cosine")
            figures.show(fig, f"{ISO} Figs. 9-11: cosines of positive vs random test pairs, "
                         f"{title}.", key=f"cos-{'before' if r is base else 'after'}",
                         height=340)

# ---- intra-modal recovery ----------------------------------------------------
st.subheader("Intra-modal similarity from the inter-modal matrix (supplement Eq. 4-10)")
d = loaded.image.shape[1]
n_avail = loaded.pair_image_rows.shape[0]
i1, i2 = st.columns(2)
k_max = max(1, min(16, d))
k_intra = i1.slider("PCA rank k", 1, k_max, min(8, k_max), key="intra_k") if k_max > 1 else 1
n_intra = i2.number_input("Pairs sampled", min_value=2, max_value=2000, value=300, step=50,
                          key="intra_n")
st.caption(f"The {int(n_intra)} sampled pairs are L2-normalised, projected jointly on their "
           f"top {k_intra} SVD components and re-normalised, since the recovery "
           f"(`transforms.recover_intra_similarity`) needs unit rows of a low rank (it caps it at "
           f"128 and needs k(k+1)/2 ≤ pairs).")
if n_avail < 2:
    st.info("Intra-modal recovery needs image-caption pairs.")
else:
    with ui.user_errors():
        rec = proj.intra(fp, loaded, int(n_intra), int(k_intra), 0)
    e1, e2, e3, e4 = st.columns(4)
    e1.metric("max |recovered − true|", f"{rec['max_abs']:.3g}")
    e2.metric("RMS error", f"{rec['rms']:.3g}")
    e3.metric("Pearson (off-diagonal)", f"{rec['pearson']:.4f}")
    e4.metric(f"Energy kept by k={rec['k']}", f"{rec['pca_energy']:.1%}",
              help=f"RMS of diag(VQVᵀ) − 1: {rec['residual']:.2g}")
    t, r = rec["true"], rec["recovered"]
    idx = projection.sample_rows(t.shape[0], figures.MAX_SCATTER_POINTS, 0)
    if idx.shape[0] < t.shape[0]:
        st.caption(f"Showing a seeded sample of {idx.shape[0]:,} of {t.shape[0]:,} "
                   f"image-image pairs (more than {figures.MAX_SCATTER_POINTS:,} points).")
    m = rec["rows"].shape[0]
    iu, ju = np.triu_indices(m, 1)
    pair_rows = rec["image_rows"]
    fig = go.Figure(go.Scattergl(
        x=t[idx], y=r[idx], mode="markers", name="image pairs", marker=dict(size=3),
        text=[f"image rows {pair_rows[iu[q]]} · {pair_rows[ju[q]]}" for q in idx],
        hovertemplate="%{text}<br>true %{x:.4f}<br>recovered %{y:.4f}<extra></extra>"))
    lo, hi = float(min(t.min(), r.min())), float(max(t.max(), r.max()))
    fig.add_trace(go.Scatter(x=[lo, hi], y=[lo, hi], mode="lines", name="y = x",
                             line=dict(dash="dash", color="grey"), hoverinfo="skip"))
    fig.update_layout(xaxis_title="true image-image cosine",
                      yaxis_title="recovered from image-text cosines")
    figures.show(fig, "Intra-modal misalignment supplement Eq. 4-10: image-image similarities "
                 "recovered from S_inter = X_T X_Iᵀ alone vs the truth X_I X_Iᵀ.",
                 key="intra", height=420)
