"""Projections & isotropy (Tyshchuk et al., "On Isotropy of Multimodal Embeddings";
intra-modal misalignment supplement). Draws only: numbers come from clipgeom.

Every section is a ``ui.section``: an error (a bad parameter, a tiny dataset)
shows in that section and the rest of the page still renders. Defaults adapt to
the dataset's size."""

import html

import numpy as np
import plotly.graph_objects as go
import streamlit as st

from clipgeom import projection
from dashboard import figures, proj, selection, ui

loaded = ui.page_header("projections & isotropy")

st.title("Projections & isotropy")
st.caption("After Tyshchuk et al., *On Isotropy of Multimodal Embeddings* (Figs. 2-4, 8-13, "
           "Table 2), and the intra-modal misalignment supplement.")

ISO = "Tyshchuk et al."
FEW = 50          # below this many items a statistic is flagged as resting on few items
fp = loaded.fingerprint
n_img, n_txt = loaded.image.shape[0], loaded.text.shape[0]
d = loaded.image.shape[1]
n_pairs = loaded.pair_image_rows.shape[0]


def remembered(key: str, default, lo, hi) -> None:
    """Start a widget at ``default`` and keep its remembered value inside its
    (data-dependent) range; the widget is then drawn without ``value=``."""
    v = min(max(st.session_state.get(key, default), lo), hi)
    if st.session_state.get(key) != v:
        st.session_state[key] = v


# ---- controls ------------------------------------------------------------------
ctl = figures.controls()
ctl.markdown("**Joint projection**")
centred = ctl.toggle("Centre before the SVD", value=ui.url_value("proj_center", False),
                     key="proj_center",
                     help="Off: the uncentred SVD shows the cone (Fig. 2); on: PCA (Fig. 3).")
normalize = ctl.toggle("L2-normalise rows first", value=ui.url_value("proj_normalize", True),
                       key="proj_normalize",
                       help="The paper normalises embeddings before projecting.")
colour_kind = {"modality": "modality"}
with ui.section("Colour by"):
    colour_kind = proj.colour_options(fp, loaded)
if st.session_state.get("proj_colour") not in colour_kind:
    st.session_state.pop("proj_colour", None)
url_colour = ui.url_value("proj_colour", "modality", str)
colour_by = ctl.selectbox("Colour by", list(colour_kind), key="proj_colour",
                          index=list(colour_kind).index(url_colour)
                          if url_colour in colour_kind else 0,
                          help="Modality, exact conformity, the raw norm, or any column of the "
                               "dataset's images / texts tables (a caption takes its image's "
                               "value and an image its first caption's). Numbers share one "
                               "colour scale across both modalities.")
n_lines = ctl.slider("Pair lines", 0, 300, 300, step=50,
                     key="proj_lines",
                     help="Thin lines join this many sampled image-text pairs (Fig. 8).")
for _key, _value in (("proj_center", centred), ("proj_normalize", normalize),
                     ("proj_colour", colour_by)):
    ui.url_keep(_key, _value)        # a copied link reopens this view


def few_note(n: int, what: str) -> None:
    if n < d:
        st.info(f"Only {n:,} {what} in {d} dimensions (n < d): the rows span at most {n} "
                "directions, so spectra and fitted transforms reflect the sample more than "
                "the model.")
    elif n < FEW:
        st.info(f"Only {n:,} {what}: this rests on very few items.")


def sample_note(n_total: int, idx: np.ndarray, what: str) -> None:
    if idx.shape[0] < n_total:
        st.caption(f"Showing a seeded sample of {idx.shape[0]:,} of {n_total:,} {what} "
                   f"(more than {figures.MAX_SCATTER_POINTS:,} points).")


def hover_texts(kind: str, rows: np.ndarray) -> list[str]:
    """Hover labels; ids and captions are user data, escaped (plotly renders tags)."""
    info = proj.item_text(fp, loaded)
    src = info["image_ids"] if kind == "image" else info["captions"]
    if src is None or len(src) <= int(rows.max(initial=0)):
        return [f"{kind} row {r}" for r in rows]
    return [f"{kind} row {r}: {html.escape(str(src[r]))}" for r in rows]


def colours():
    """The "Colour by" values (None: colour by modality)."""
    if colour_by == "modality":
        return None
    return proj.colour_values(fp, loaded, colour_by)


def item_scatter(fig: go.Figure, coords: dict, rows: dict, col, *, size: int = 4) -> None:
    """One trace per modality, named "image" / "text", with each point's dataset row in
    customdata. Colour: the modality's (palette), one shared continuous scale
    (``coloraxis``) for a number, or palette colours with a legend for categories."""
    numeric = col is not None and col["kind"] == "numeric"
    categorical = col is not None and col["kind"] == "categorical"
    for kind, symbol in (("image", "circle"), ("text", "x")):
        xy, r = coords[kind], np.asarray(rows[kind])
        hov = np.array(hover_texts(kind, r), dtype=object)
        marker = dict(size=size, symbol=symbol, opacity=0.75)
        missing = np.zeros(r.shape[0], dtype=bool)
        if numeric:
            vals = col[kind][r]
            missing = ~np.isfinite(vals)
            hov = [f"{h}<br>{html.escape(col['title'])}: {v:.4g}" for h, v in zip(hov, vals)]
            marker.update(color=vals, coloraxis="coloraxis")
        elif categorical:
            codes = col[kind][r]
            missing = codes < 0
            cats = [html.escape(str(c)) for c in col["categories"]]
            marker.update(color=[figures.colour(int(c)) for c in codes])
            hov = [f"{h}<br>{html.escape(col['title'])}: {cats[c] if c >= 0 else '(none)'}"
                   for h, c in zip(hov, codes)]
        else:
            marker.update(color=figures.colour(kind))
        hov = np.array(hov, dtype=object)
        keep = ~missing
        if numeric or categorical:
            marker["color"] = np.asarray(marker["color"], dtype=object)[keep] if categorical \
                else np.asarray(marker["color"])[keep]
        fig.add_trace(go.Scattergl(
            x=xy[keep, 0], y=xy[keep, 1], mode="markers", name=kind, marker=marker,
            customdata=r[keep], text=hov[keep], legendgroup=kind,
            hovertemplate="%{text}<br>(%{x:.3f}, %{y:.3f})<extra></extra>"))
        if missing.any():
            fig.add_trace(go.Scattergl(
                x=xy[missing, 0], y=xy[missing, 1], mode="markers",
                name=f"{kind}, no {html.escape(col['title'])}", legendgroup=kind,
                customdata=r[missing],
                marker=dict(size=size, symbol=symbol, opacity=0.5,
                            color=["lightgrey"] * int(missing.sum())),
                text=hov[missing], hovertemplate="%{text}<extra></extra>"))
    if numeric:
        both = np.concatenate([col["image"][np.asarray(rows["image"])],
                               col["text"][np.asarray(rows["text"])]])
        both = both[np.isfinite(both)]
        lo, hi = (float(both.min()), float(both.max())) if both.size else (0.0, 1.0)
        fig.update_layout(coloraxis=dict(colorscale=figures.VALUE_SCALE, cmin=lo, cmax=hi,
                                         colorbar=dict(title=dict(
                                             text=html.escape(col["title"])))))
    if categorical:
        for c, name in enumerate(col["categories"]):
            fig.add_trace(go.Scattergl(x=[None], y=[None], mode="markers",
                                       name=html.escape(f"{col['title']} = {name}"),
                                       marker=dict(size=9, symbol="square",
                                                   color=[figures.colour(c)]),
                                       hoverinfo="skip"))
        fig.update_layout(legend=dict(title=dict(text="symbol: ○ image, × text")))


# ---- isotropy metrics --------------------------------------------------------
st.subheader("Isotropy (Eq. 1-2, Table 1)")
with ui.section("Isotropy"):
    few_note(min(n_img, n_txt), "rows in the smaller modality")
    iso = proj.isotropy(loaded)                # the stored report's numbers
    m1, m2, m3, m4 = st.columns(4)
    m1.metric("I1 image (min Z / max Z)", f"{iso['image']['I1']:.6g}",
              help="1 = isotropic; near 0 = a narrow cone.")
    m2.metric("I1 text", f"{iso['text']['I1']:.6g}")
    m3.metric("I2 image (std Z / mean Z)", f"{iso['image']['I2']:.6g}",
              help="0 = isotropic.")
    m4.metric("I2 text", f"{iso['text']['I2']:.6g}")
    st.caption("All rows of each modality, L2-normalised; from the dataset's report "
               "(`clipgeom report`, Home), computed once per dataset version.")

# ---- joint SVD projection ----------------------------------------------------
st.subheader(("Centred" if centred else "Uncentred") + " joint SVD projection (Fig. 8)")
with ui.section("Joint SVD projection"):
    few_note(n_img + n_txt, "image and text rows")
    jp = proj.joint(fp, loaded, bool(centred), bool(normalize))
    if jp["n_fit"] < jp["n_rows"]:
        st.caption(f"The SVD is fitted on a seeded sample of {jp['n_fit']:,} of the "
                   f"{jp['n_rows']:,} rows (the same fraction of each modality); every row "
                   "is projected on its components, and the spectrum is the sample's, "
                   "scaled by √(rows / sampled rows).")
    idx_i = projection.sample_rows(n_img, figures.MAX_SCATTER_POINTS, 0)
    idx_t = projection.sample_rows(n_txt, figures.MAX_SCATTER_POINTS, 1)
    sample_note(n_img, idx_i, "images")
    sample_note(n_txt, idx_t, "captions")
    fig = go.Figure()
    if n_lines and n_pairs > 1:
        pidx = projection.sample_rows(n_pairs, max(2, min(n_lines, n_pairs)), 2)
        a = jp["image"][loaded.pair_image_rows[pidx]]
        b = jp["text"][loaded.pair_text_rows[pidx]]
        xs = np.column_stack([a[:, 0], b[:, 0], np.full(len(pidx), np.nan)]).ravel()
        ys = np.column_stack([a[:, 1], b[:, 1], np.full(len(pidx), np.nan)]).ravel()
        fig.add_trace(go.Scattergl(x=xs, y=ys, mode="lines", name=f"{len(pidx)} pairs",
                                   line=dict(width=0.5, color="rgba(120,120,120,0.35)"),
                                   hoverinfo="skip"))
    item_scatter(fig, {"image": jp["image"][idx_i], "text": jp["text"][idx_t]},
                 {"image": idx_i, "text": idx_t}, colours())
    fig.update_layout(xaxis_title="component 1", yaxis_title="component 2")
    selection.chart(fig, f"{ISO} Fig. 8 ({'centred, Fig. 3' if centred else 'uncentred, Fig. 2'}): "
                    "one SVD of image and text rows stacked; lines join paired rows.",
                    key="joint-svd", height=520, loaded=loaded)

    sv = jp["singular_values"]
    fig = go.Figure(go.Scatter(x=np.arange(1, sv.shape[0] + 1), y=sv, mode="lines+markers",
                               name="singular values", marker=dict(size=4),
                               text=[f"{r:.2%} of the "
                                     f"{'variance' if centred else 'second moment'}"
                                     for r in jp["ratio"]],
                               hovertemplate="σ%{x}=%{y:.4g}<br>%{text}<extra></extra>"))
    fig.update_layout(yaxis_type="log", xaxis_title="index", yaxis_title="singular value (log)")
    figures.show(fig, f"{ISO} Fig. 4: singular spectrum of the stacked "
                 f"{'centred' if centred else 'uncentred'} rows.", key="spectrum", height=340)

# ---- UMAP --------------------------------------------------------------------
st.subheader("UMAP (Figs. 14-15)")
with ui.section("UMAP"):
    n_most = max(n_img, n_txt)
    lo_rows = min(20, n_most)
    remembered("umap_rows", min(2000, n_most), lo_rows, max(n_most, lo_rows))
    per_mod = st.number_input("Rows per modality for UMAP", min_value=lo_rows,
                              max_value=max(n_most, lo_rows), step=500, key="umap_rows")
    um = proj.umap_stored(loaded, int(per_mod))
    if um is None:
        if st.button("Compute UMAP", key="umap_go"):
            # drawn here, outside any cached function; the result goes to disk
            bar = st.progress(0.0, text="UMAP…")
            try:
                proj.umap_compute(loaded, int(per_mod),
                                  progress=lambda f, t: bar.progress(min(max(f, 0.0), 1.0),
                                                                     text=t))
            finally:
                bar.empty()
            um = proj.umap_stored(loaded, int(per_mod))
        else:
            st.caption("UMAP takes a few seconds (up to a minute the very first time, while "
                       "its code compiles; then it is cached on disk): press the button to "
                       "compute it.")
    if um is not None:
        few_note(um["image"].shape[0] + um["text"].shape[0], "rows in the UMAP")
        fig = go.Figure()
        item_scatter(fig, {"image": um["image"], "text": um["text"]},
                     {"image": um["image_rows"], "text": um["text_rows"]}, colours())
        selection.chart(fig, f"{ISO} Figs. 14-15: joint UMAP (cosine) of seeded samples of "
                        f"{um['image'].shape[0]:,} images and {um['text'].shape[0]:,} captions "
                        "(stored: shipped with the dataset or computed before).",
                        key="umap", height=480, loaded=loaded)

# ---- transform lab -----------------------------------------------------------
st.subheader("Transform lab (Sec. 4.2-4.3, Table 2, Figs. 9-13)")
with ui.section("Transform lab"):
    if n_pairs < 4:
        st.info(f"The transform lab needs at least 4 image-caption pairs; this dataset has "
                f"{n_pairs}.")
    else:
        c1, c2, c3 = st.columns(3)
        method = c1.selectbox("Transform", list(proj.METHOD_LABELS), key="lab_method",
                              format_func=proj.METHOD_LABELS.get)
        train_fraction = c2.slider("Train fraction", 0.5, 0.9, 0.8, step=0.05, key="lab_train")
        sizes = proj.lab_sizes(loaded, float(train_fraction))
        k_max = sizes["k_max"]
        if k_max >= 2:
            remembered("lab_k", min(k_max, 32), 1, k_max)
            k = c3.slider("Whitening k", 1, k_max, key="lab_k",
                          help=f"Number of whitened principal directions (used by 'whiten'); "
                               f"at most min(d = {d}, 2 (train pairs - 1) = "
                               f"{2 * (sizes['train'] - 1)}).")
        else:
            k = 1
            c3.caption("Whitening k = 1 (too few train pairs for more).")
        few_note(sizes["train"], "train pairs")
        if sizes["test"] < FEW:
            st.info(f"The test split has {sizes['test']} pairs: its loss and retrieval "
                    "accuracy rest on very few items.")
        temperature = loaded.default_temperature     # the model's own τ where recorded
        table = proj.alignment_table(loaded, method, int(k), float(train_fraction), temperature)
        res = proj.alignment(fp, loaded, method, int(k), float(train_fraction), temperature)
        base = proj.alignment(fp, loaded, "none", int(k), float(train_fraction), temperature)
        tag = f"{method}-{k}-{train_fraction}"
        before = proj.joint_of(fp, f"raw-{train_fraction}", res["image_raw"], res["text_raw"])
        after = proj.joint_of(fp, tag, res["image_test"], res["text_test"])
        figures.table(table, key="table2", height=36 * (len(table) + 1) + 4,
                      caption=f"{ISO} Table 2: CLIP loss (τ = {temperature}) and top-1 retrieval "
                              f"on the train and test splits, transforms fitted on train; pairs: "
                              f"a seeded sample of at most {proj.MAX_LAB_PAIRS:,}.")
        rows = {"image": res["test_image_rows"], "text": res["test_text_rows"]}
        cols = st.columns(2)
        for col, (title, p) in zip(cols, (("before (raw)", before),
                                           (f"after {proj.METHOD_LABELS[method]}", after))):
            with col:
                fig = go.Figure()
                idx = projection.sample_rows(p["image"].shape[0], figures.MAX_SCATTER_POINTS, 0)
                item_scatter(fig, {"image": p["image"][idx], "text": p["text"][idx]},
                             {"image": rows["image"][idx], "text": rows["text"][idx]}, None)
                fig.update_layout(title=title)
                figures.show(fig, f"{ISO} Figs. 12-13: joint uncentred SVD of the test split, "
                             f"{title}.", key=f"lab-{'before' if p is before else 'after'}",
                             height=380)
        cols = st.columns(2)
        nb = int(max(5, min(60, np.sqrt(res["pos"].shape[0]) * 2)))   # bins <= items
        for col, (title, r) in zip(cols, (("before (raw)", base),
                                           (f"after {proj.METHOD_LABELS[method]}", res))):
            with col:
                fig = go.Figure()
                fig.add_trace(go.Histogram(x=r["pos"], name="positive pairs", opacity=0.6,
                                           histnorm="probability density", nbinsx=nb,
                                           marker_color=figures.colour(2),
                                           hovertemplate="cos=%{x}<br>density=%{y:.3f}"))
                fig.add_trace(go.Histogram(x=r["rand"], name="random pairs", opacity=0.6,
                                           histnorm="probability density", nbinsx=nb,
                                           marker_color=figures.colour(7),
                                           hovertemplate="cos=%{x}<br>density=%{y:.3f}"))
                fig.update_layout(barmode="overlay", title=title, xaxis_title="cosine")
                figures.show(fig, f"{ISO} Figs. 9-11: cosines of positive vs random test "
                             f"pairs, {title}.", key=f"cos-{'before' if r is base else 'after'}",
                             height=340)

# ---- intra-modal recovery ----------------------------------------------------
st.subheader("Intra-modal similarity from the inter-modal matrix (supplement Eq. 4-10)")
with ui.section("Intra-modal recovery"):
    if n_pairs < 3:
        st.info(f"Intra-modal recovery needs at least 3 image-caption pairs; this dataset has "
                f"{n_pairs}.")
    else:
        i1, i2 = st.columns(2)
        n_hi = int(min(n_pairs, 2500))
        remembered("intra_n", min(300, n_hi), 3, n_hi)
        n_intra = int(i1.number_input("Pairs sampled", min_value=3, max_value=n_hi,
                                      step=50, key="intra_n",
                                      help="The recovery costs an N x N SVD and a least-squares "
                                           "system of N x k(k+1)/2: over ~1,000 pairs it takes "
                                           "seconds."))
        k_max = projection.max_recovery_rank(n_intra, d)
        if k_max >= 2:
            remembered("intra_k", projection.default_recovery_rank(n_intra, d), 1, k_max)
            k_intra = int(i2.slider("Rank k", 1, k_max, key="intra_k",
                                    help=f"Singular vectors of S_inter kept; k(k+1)/2 ≤ pairs, "
                                         f"k ≤ d = {d}: at most {k_max} here."))
        else:
            k_intra = 1
        need_exact = d * (d + 1) // 2
        st.caption(
            f"Only the image-text cosines S_inter = X_T X_Iᵀ of {n_intra:,} sampled pairs "
            f"(L2-normalised rows) go in; the recovered image-image cosines are compared with "
            f"the TRUE ones, X_I X_Iᵀ. The supplement's recovery is exact when k = d = {d} "
            f"and there are at least d(d+1)/2 = {need_exact:,} pairs; with fewer pairs k is "
            f"capped at {k_max} and the recovery is approximate.")
        if n_intra < FEW:
            st.info(f"Only {n_intra} pairs: these errors rest on very few items.")
        rec = proj.intra(fp, loaded, n_intra, k_intra, 0)
        e1, e2, e3, e4 = st.columns(4)
        e1.metric("RMS error (off-diagonal)", f"{rec['rms']:.3g}")
        e2.metric("max |recovered − true|", f"{rec['max_abs']:.3g}")
        e3.metric("Pearson (off-diagonal)", f"{rec['pearson']:.4f}")
        e4.metric(f"S_inter energy in top {rec['k']}", f"{rec['energy']:.1%}",
                  help=f"RMS of diag(VQVᵀ) − 1: {rec['residual']:.2g}")
        c_left, c_right = st.columns(2)
        with c_left:
            t, r = rec["true"], rec["recovered"]
            idx = projection.sample_rows(t.shape[0], figures.MAX_SCATTER_POINTS, 0)
            if idx.shape[0] < t.shape[0]:
                st.caption(f"Showing a seeded sample of {idx.shape[0]:,} of {t.shape[0]:,} "
                           f"image-image pairs (more than {figures.MAX_SCATTER_POINTS:,} "
                           "points).")
            m = rec["rows"].shape[0]
            iu, ju = np.triu_indices(m, 1)
            pair_rows = rec["image_rows"]
            fig = go.Figure(go.Scattergl(
                x=t[idx], y=r[idx], mode="markers", name="image pairs", marker=dict(size=3),
                customdata=np.column_stack([pair_rows[iu[idx]], pair_rows[ju[idx]]]),
                hovertemplate="image rows %{customdata[0]} · %{customdata[1]}<br>"
                              "true %{x:.4f}<br>recovered %{y:.4f}<extra></extra>"))
            lo = float(min(t.min(), r.min())) if t.size else -1.0
            hi = float(max(t.max(), r.max())) if t.size else 1.0
            fig.add_trace(go.Scatter(x=[lo, hi], y=[lo, hi], mode="lines", name="y = x",
                                     line=dict(dash="dash", color="grey"), hoverinfo="skip"))
            fig.update_layout(xaxis_title="true image-image cosine",
                              yaxis_title=f"recovered from image-text cosines (k={rec['k']})")
            figures.show(fig, "Intra-modal misalignment supplement Eq. 4-10: image-image "
                         "cosines recovered from S_inter alone vs the data's true ones.",
                         key="intra", height=420)
        with c_right:
            cv = rec["curve"]
            fig = go.Figure()
            fig.add_trace(go.Scatter(x=cv["k"], y=cv["rms"], mode="lines+markers",
                                     name="RMS error", marker_color=figures.colour(3),
                                     line_color=figures.colour(3),
                                     hovertemplate="k=%{x}<br>RMS %{y:.4g}<extra></extra>"))
            fig.add_trace(go.Scatter(x=cv["k"], y=cv["pearson"], mode="lines+markers",
                                     name="Pearson", yaxis="y2", marker_color=figures.colour(4),
                                     line_color=figures.colour(4),
                                     hovertemplate="k=%{x}<br>Pearson %{y:.4f}<extra></extra>"))
            fig.update_layout(xaxis_title="rank k", yaxis_title="RMS error (off-diagonal)",
                              yaxis2=dict(title="Pearson", overlaying="y", side="right",
                                          range=[min(0.0, float(np.nanmin(cv["pearson"]))),
                                                 1.0]),
                              legend=dict(orientation="h", y=-0.25))
            figures.show(fig, "Recovery error vs the rank k kept from S_inter (same pairs), "
                         "against the true image-image cosines.", key="intra-curve", height=420)
