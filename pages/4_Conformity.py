"""Conformity: Double-Ellipsoid Sec. 6 (Def. 1-2, Eq. 10-11, Prop. 1; Figs. 8-10, 13).

Every user string (captions, file names, dataset names) is shown as plain
text (st.text, st.dataframe, figures.gallery) or escaped (plain_markdown for
captions, html.escape inside plotly hover text and legends)."""

import html

import numpy as np
import pandas as pd
import plotly.graph_objects as go
import streamlit as st

from clipgeom.errors import InputError
from clipgeom.safety import plain_markdown
from dashboard import data, figures, lossconf, selection, shape, ui

loaded = ui.page_header("conformity")

st.title("Conformity")
st.caption("Double-Ellipsoid Sec. 6: the conformity of an item is its mean cosine to every "
           "other item of its modality (Def. 1, Eq. 10), computed exactly in O(N d); it is "
           "estimated by a·cos(m, v) + b with m the raw mean (Def. 2, Eq. 11).")

fp = loaded.fingerprint
stored = loaded.name != data.SYNTHETIC   # the in-memory generator has no tables
n_items = min(loaded.image.shape[0], loaded.text.shape[0])
too_few = lossconf.conformity_note(loaded)
b_lo, b_hi, b_default, b_step = shape.bins_range(n_items, lo=10, hi=200, default=50,
                                                 step=10)
bins, page_size = b_default, 12
with figures.controls(), ui.section("Controls"):
    shape.clamp_state("conf_bins", b_lo, b_hi)     # another dataset's choice may not fit
    bins = st.slider("Histogram bins (Fig. 10)", b_lo, b_hi, b_default, step=b_step,
                     key="conf_bins", help="At most one bin per item of the smaller modality.")
    page_size = st.number_input("Gallery items per page", 4, 48, 12, step=4,
                                key="conf_page_size")
bins = int(min(bins, b_hi))
if too_few:
    st.info(too_few)

caps = image_caps = None
with ui.section("Captions"):                # optional: hover labels and gallery captions
    caps, image_caps = lossconf.captions_by_row(fp, loaded.name if stored else None)


def hover_label(mod: str, rows) -> list[str]:
    """What a point is: its caption (for an image, its first caption), else its row.
    Escaped: plotly renders HTML tags in hover text."""
    if mod == "text" and caps:
        return [html.escape(f"text row {r}: {caps[r]}") for r in rows]
    if mod == "image" and image_caps:
        return [html.escape(f"image row {r}: {image_caps.get(int(r), '')}") for r in rows]
    return [f"{mod} row {r}" for r in rows]


# ------------------------------------------------------------------ Fig. 9
with ui.section("Fig. 9: exact vs estimated conformity"):
    st.subheader("Exact vs estimated conformity (Fig. 9, Prop. 1)")
    if not too_few:
        fits = lossconf.fits(fp, loaded)
        st.markdown(
            "**Convention.** `a`, `b` fit Def. 2 as written, C ≈ a·cos(m, v) + b, so the "
            "estimate is on the conformity scale. The numbers the paper reports (a = 1.461 "
            "images, 1.411 text) are of the *reversed* regression, cos(m, v) ≈ a_paper·C + "
            "b_paper (its appendix: \"the correlation is reversed in the main paper\"). "
            "Prop. 1 predicts a = ‖m‖ / √(R² + ‖m‖²), i.e. a_paper ≈ 1/a (paper: 1.414).")
        rows = [{"modality": mod, "a": f.a, "b": f.b, "Pearson": f.pearson,
                 "a (Prop. 1)": f.theory_a, "a_paper": f.a_paper, "b_paper": f.b_paper,
                 "a_paper (Prop. 1)": f.theory_a_paper, "mean conformity": f.mean,
                 "n": len(f.exact)} for mod, f in fits.items()]
        for mod, f in fits.items():          # one row per modality: wide enough for values
            m1, m2, m3 = st.columns(3)
            m1.metric(f"{mod}: Pearson", f"{f.pearson:.4f}")
            m2.metric(f"{mod}: a · b", f"{f.a:.3f} · {f.b:+.4f}")
            m3.metric(f"{mod}: a_paper vs Prop. 1",
                      f"{f.a_paper:.3f} vs {f.theory_a_paper:.3f}")
        if n_items < 30:
            st.caption(f"Fitted on only {n_items} items per modality: the line and "
                       "Pearson's r rest on very few points.")
        figures.table(height="auto", df=pd.DataFrame(rows), key="conformity-fit",
                      caption="Double-Ellipsoid Def. 2 / Eq. 11 fits and Prop. 1's "
                              "predicted slope.")
        fig = go.Figure()
        notes = []
        for mod, f in fits.items():
            idx = lossconf.scatter_sample(len(f.exact), figures.MAX_SCATTER_POINTS)
            if len(idx) < len(f.exact):
                notes.append(f"{mod}: {len(idx):,} of {len(f.exact):,} points drawn "
                             "(seeded sample)")
            # An item scatter: named by modality, dataset row index in customdata.
            fig.add_trace(go.Scattergl(x=f.cos_mean[idx], y=f.exact[idx], mode="markers",
                                       name=mod, customdata=idx,
                                       marker=dict(size=4, opacity=0.5),
                                       text=hover_label(mod, idx),
                                       hovertemplate="%{text}<br>cos(m, v)=%{x:.4f}"
                                                     "<br>conformity=%{y:.4f}"
                                                     "<extra></extra>"))
            order = np.argsort(f.cos_mean[idx])
            fig.add_trace(go.Scattergl(x=f.cos_mean[idx][order], y=f.estimated[idx][order],
                                       mode="lines", name=f"{mod} fit a·cos + b",
                                       line=dict(dash="dash"),
                                       hovertemplate=f"{mod} estimate<br>cos(m, v)=%{{x:.4f}}"
                                                     "<br>Ĉ=%{y:.4f}<extra></extra>"))
        fig.update_layout(xaxis_title="cos(m, v) (Eq. 11)",
                          yaxis_title="exact conformity C(v) (Eq. 10)")
        pearson = ", ".join(f"{m} {f.pearson:.4f}" for m, f in fits.items())
        selection.chart(fig, "Double-Ellipsoid Fig. 9: exact conformity (Def. 1) against the "
                             "cosine to the modality mean, with the least-squares line of Def. 2 "
                             f"(Pearson: {pearson}; paper: 0.9998 on MS-COCO).",
                        key="fig9-scatter", loaded=loaded)
        if notes:
            st.caption("Sampled for drawing: " + "; ".join(notes) + ".")

# ------------------------------------------------------------------ Fig. 10
with ui.section("Fig. 10: conformity distributions"):
    st.subheader("Image vs text conformity distributions (Fig. 10)")
    if not too_few:
        hist = lossconf.distributions(fp, loaded, bins)
        st.metric("KL(image ‖ text) of the conformity distributions", f"{hist.kl:.4f}")
        centres = (hist.edges[:-1] + hist.edges[1:]) / 2
        fig = go.Figure()
        for name, p in (("image", hist.first), ("text", hist.second)):
            fig.add_trace(go.Bar(x=centres, y=p, name=name, opacity=0.6,
                                 hovertemplate=f"{name}<br>conformity≈%{{x:.4f}}<br>"
                                               "share=%{y:.4f}<extra></extra>"))
        fig.update_layout(barmode="overlay", bargap=0, xaxis_title="exact conformity",
                          yaxis_title="share of items")
        figures.show(fig, f"Double-Ellipsoid Fig. 10: the conformity distributions of the "
                          f"two modalities on {len(centres)} shared bins; KL(image ‖ text) = "
                          f"{hist.kl:.4f} (paper ≈ 0.14 on MS-COCO).", key="fig10-hist")

# ------------------------------------------------------------------ galleries (Fig. 8, 13)
images_df = texts_df = None
with ui.section("Tables"):
    if stored:
        images_df, texts_df = lossconf.tables(fp, loaded.name)

with ui.section("Most and least conforming items"):
    st.subheader("Most and least conforming items (Figs. 8, 13)")
    g1, g2 = st.columns(2)
    gal_mod = g1.radio("Modality", ["image", "text"], horizontal=True, key="gal_modality")
    gal_order = g2.radio("Order", ["most conforming", "least conforming"], horizontal=True,
                         key="gal_order")
    if not too_few:
        order = lossconf.ranking(fp, loaded, gal_mod, gal_order == "most conforming")
        size = int(page_size)
        n_pages = max(1, int(np.ceil(len(order) / size)))
        sig = (fp, gal_mod, gal_order, size)
        if "gal_page" not in st.session_state or st.session_state.get("gal_sig") != sig:
            st.session_state["gal_page"] = 1       # a new ranking starts at its first page
        st.session_state["gal_sig"] = sig
        b1, b2, b3 = st.columns([1, 2, 1])
        if b1.button("◀ previous", key="gal_prev"):
            st.session_state["gal_page"] = max(1, st.session_state["gal_page"] - 1)
        if b3.button("next ▶", key="gal_next"):
            st.session_state["gal_page"] = min(n_pages, st.session_state["gal_page"] + 1)
        st.session_state["gal_page"] = min(max(1, st.session_state["gal_page"]), n_pages)
        page = b2.number_input(f"Page (of {n_pages})", 1, n_pages, key="gal_page")
        rows_here = order[(page - 1) * size: page * size]
        exact = lossconf.fits(fp, loaded)[gal_mod].exact
        first_rank = (page - 1) * size + 1
        gallery = pd.DataFrame({"rank": np.arange(first_rank, first_rank + len(rows_here)),
                                "row": rows_here, "conformity": exact[rows_here]})
        if gal_mod == "image" and images_df is not None:
            gallery["image_id"] = images_df["image_id"].to_numpy()[rows_here]
            if "source" in images_df.columns:
                gallery["source"] = images_df["source"].to_numpy()[rows_here]
            gallery["caption"] = [image_caps.get(int(r), "") if image_caps else ""
                                  for r in rows_here]
        elif gal_mod == "text" and texts_df is not None:
            gallery["text_id"] = texts_df["text_id"].to_numpy()[rows_here]
            gallery["caption"] = texts_df["caption"].to_numpy()[rows_here]

        thumbs = []
        if gal_mod == "image" and images_df is not None:
            thumbs = [lossconf.thumb(loaded.name, int(r)) for r in rows_here]
        if thumbs and any(t is not None for t in thumbs):
            # Labels are plain text (figures.gallery): sources are user strings.
            figures.gallery([(t, f"#{rk} · C = {exact[r]:.4f}"
                                 + ("" if t is not None else " (no thumbnail)"))
                             for rk, r, t in zip(gallery["rank"], rows_here, thumbs)])
        elif images_df is None and texts_df is None:
            st.caption("This dataset has no thumbnails or captions (generated vectors): the "
                       "table lists row numbers.")
        gal_key = f"gallery-{gal_mod}-{'most' if 'most' in gal_order else 'least'}-p{page}"
        figures.table(height="auto", df=gallery, key=gal_key,
                      caption=f"Page {page} of {n_pages}: {gal_mod}s ranked by exact "
                              "conformity (Def. 1), as in Double-Ellipsoid Figs. 8 and 13.")


# ------------------------------------------------------------------ a new caption or image
def query_histogram(values, value: float, what: str, modality: str, key: str) -> None:
    fig = go.Figure(go.Histogram(x=values, nbinsx=bins, name=f"{modality} (dataset)",
                                 hovertemplate="conformity≈%{x:.4f}<br>count=%{y}"
                                               "<extra></extra>"))
    fig.add_vline(x=value, line_dash="dash", annotation_text=f"your {what}")
    fig.update_layout(xaxis_title="conformity", yaxis_title=f"{what}s")
    figures.show(fig, f"Double-Ellipsoid Def. 1 / Fig. 10: the new {what}'s mean cosine to "
                      f"every dataset {what}, against the {what}s' own conformity.",
                 key=key, height=320)


with ui.section("Conformity of a new caption or image"):
    st.subheader("Conformity of a new caption or image")
    if images_df is None:
        st.info("Generated data records no CLIP model, so a new caption or image cannot be "
                "embedded.")
    elif too_few:
        pass
    else:
        try:
            lossconf.model_spec(loaded.name)
        except InputError as exc:
            st.info(plain_markdown(str(exc)))     # it names the dataset (a user string)
        else:
            fits = lossconf.fits(fp, loaded)
            left, right = st.columns(2)
            with left, ui.section("New caption"):
                caption = st.text_input("Caption", key="conf_caption",
                                        placeholder="a photo of a red circle")
                if caption.strip():
                    value = lossconf.caption_conformity(fp, loaded.name, caption)
                    st.metric("Conformity to the dataset's captions (Def. 1)",
                              f"{value:.4f}")
                    query_histogram(fits["text"].exact, value, "caption", "text",
                                    "caption-conformity")
            with right, ui.section("New image"):
                up = st.file_uploader("Image", type=["png", "jpg", "jpeg", "webp", "bmp"],
                                      key="conf_image")
                if up is not None:
                    value = lossconf.image_conformity(fp, loaded.name, up.name,
                                                      up.getvalue())
                    st.metric("Conformity of the uploaded image to the dataset's images "
                              "(Def. 1)", f"{value:.4f}")
                    st.text(f"file: {up.name}")
                    query_histogram(fits["image"].exact, value, "image", "image",
                                    "image-conformity")

# ------------------------------------------------------------------ two datasets
with ui.section("Two datasets compared"):
    st.subheader("Two datasets compared (Sec. 7.1)")
    others = [n for n in data.dataset_names() if n != loaded.name]
    c1, c2 = st.columns([2, 1])
    other_name = c1.selectbox("Compare with", others, key="conf_other",
                              help="E.g. real vs generated images: the paper finds generated "
                                   "images conform more than real ones.")
    cmp_mod = c2.radio("Modality", ["image", "text"], horizontal=True, key="conf_cmp_mod")
    if other_name:
        other = data.open_dataset(other_name)
        n_cmp = min(len(loaded.image if cmp_mod == "image" else loaded.text),
                    len(other.image if cmp_mod == "image" else other.text))
        if n_cmp < lossconf.MIN_CONFORMITY_ROWS:
            st.info(f"Comparing conformity needs at least {lossconf.MIN_CONFORMITY_ROWS} "
                    f"{cmp_mod}s in each dataset.")
        else:
            cmp_bins = min(bins, lossconf.default_bins(n_cmp, 200))
            cmp = lossconf.compare_datasets(fp, loaded, other.fingerprint, other, cmp_mod,
                                            cmp_bins)
            centres = (cmp.edges[:-1] + cmp.edges[1:]) / 2
            fig = go.Figure()
            for k, (label, p) in enumerate(((loaded.name, cmp.first),
                                            (other_name, cmp.second))):
                label = html.escape(label)     # a dataset name is a user string
                fig.add_trace(go.Bar(x=centres, y=p, name=label, opacity=0.6,
                                     marker_color=figures.colour(2 + k),
                                     hovertemplate=f"{label}<br>conformity≈%{{x:.4f}}<br>"
                                                   "share=%{y:.4f}<extra></extra>"))
            fig.update_layout(barmode="overlay", bargap=0,
                              xaxis_title=f"{cmp_mod} conformity (within its own dataset)",
                              yaxis_title="share of items")
            figures.show(fig, f"Double-Ellipsoid Sec. 7.1: {cmp_mod} conformity "
                              f"distributions of two datasets on {len(centres)} shared bins; "
                              f"KL({plain_markdown(loaded.name)} ‖ {plain_markdown(other_name)})"
                              f" = {cmp.kl:.4f}.", key="conformity-compare", height=340)

# ------------------------------------------------------------------ frequency
with ui.section("Concept frequency vs conformity"):
    st.subheader("Concept frequency vs conformity")
    freq = None
    if images_df is not None and not too_few:
        freq = lossconf.frequency(fp, loaded, loaded.name)
    if too_few:
        pass
    elif freq is None:
        st.info(("This dataset's images table has no `concept_frequency` column"
                 if stored else "Generated data has no images table, so no "
                                "`concept_frequency`")
                + " (the bundled demo world records one), so conformity cannot be compared "
                  "with concept frequency.")
    elif freq["note"]:
        st.info(freq["note"])
    else:
        st.metric("Spearman ρ (image conformity vs concept frequency)", f"{freq['rho']:.4f}",
                  help=f"p = {freq['p_value']:.2g}, n = {freq['n']:,}")
        idx = lossconf.scatter_sample(len(freq["frequency"]), figures.MAX_SCATTER_POINTS)
        fig = go.Figure(go.Scattergl(x=freq["frequency"][idx], y=freq["conformity"][idx],
                                     mode="markers", marker=dict(size=4, opacity=0.5),
                                     customdata=idx, name="image",
                                     hovertemplate="image row %{customdata}<br>frequency="
                                                   "%{x:.4g}<br>conformity=%{y:.4f}"
                                                   "<extra></extra>"))
        fig.update_layout(xaxis_title="concept frequency", yaxis_title="exact conformity")
        figures.show(fig, f"Double-Ellipsoid Sec. 6 (Prediction 1): common concepts conform "
                          f"more; Spearman ρ = {freq['rho']:.3f}.", key="frequency")
        if len(idx) < len(freq["frequency"]):
            st.caption(f"Sampled for drawing: {len(idx):,} of {len(freq['frequency']):,} "
                       "points (seeded).")
