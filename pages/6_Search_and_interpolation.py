"""Search & interpolation: FAISS search, SLERP vs vSLERP (Double-Ellipsoid
Sec. 7.2, Fig. 12) and the blur experiment (Sec. 5, Fig. 7)."""

import numpy as np
import pandas as pd
import plotly.graph_objects as go
import streamlit as st

from clipgeom.errors import InputError
from dashboard import data, figures, lossconf, searchinterp, ui

loaded = ui.page_header("search & interpolation")

st.title("Search & interpolation")
fp = loaded.fingerprint
stored = loaded.name != data.SYNTHETIC
name = loaded.name if stored else None
captions, image_captions = lossconf.captions_by_row(fp, name)

box = figures.controls()
with box:
    k = st.slider("Results per search", 1, 48, 12, key="search_k")


def item_label(modality: str, row: int) -> str:
    if modality == "text":
        return captions[row] if captions else f"text row {row}"
    if image_captions:
        return image_captions.get(row, "") or f"image row {row}"
    return f"image row {row}"


def thumb(row: int):
    return lossconf.thumb(name, int(row)) if stored else None


def show_results(res: dict, key: str) -> None:
    """A gallery (image targets) or caption list, plus the downloadable table."""
    target = res["target"]
    rows = [r for r in res["results"]]
    if not rows:
        st.info("No results.")
        return
    st.caption(f"{res['query']} → {len(rows)} nearest {target}s (cosine, FAISS "
               f"{res['index_kind']} index).")
    table = pd.DataFrame([{"rank": r["rank"], "score": r["score"], "row": r["row"],
                           "id": r["id"], "caption": item_label(target, r["row"])}
                          for r in rows])
    if target == "image":
        figures.gallery([(thumb(r["row"]), f"#{r['rank']} · {r['score']:.3f} · "
                          f"{item_label('image', r['row'])}") for r in rows])
    figures.table(table, key=key, caption="Search results (cosine similarity of raw "
                                          "embeddings, L2-normalised).")


# ------------------------------------------------------------------ search
st.subheader("Nearest-neighbour search")
if not stored:
    st.info("The in-memory generator has no stored index, captions or model: pick a "
            "stored dataset (the bundled demo, or one you uploaded) to search.")
else:
    st.caption("Queries run against a FAISS index of the target modality (exact inner "
               "product on normalised vectors up to 200,000 rows, IVF above), built once "
               "per dataset and kept with it.")
    by_text, by_image, by_item = st.tabs(["By text", "By image", "From an item"])
    try:
        lossconf.model_spec(name)
        has_model = True
    except InputError as exc:
        has_model, why = False, str(exc)
    with by_text:
        if not has_model:
            st.info(why)
        else:
            c1, c2 = st.columns([3, 1])
            q = c1.text_input("Text query", key="search_text",
                              placeholder="a small red circle at the top left")
            target = c2.radio("Search among", ["image", "text"], key="search_text_target",
                              horizontal=True)
            if q.strip():
                with ui.user_errors():
                    show_results(searchinterp.text_query(fp, name, q, target, k),
                                 key="search-text")
    with by_image:
        if not has_model:
            st.info(why)
        else:
            c1, c2 = st.columns([3, 1])
            up = c1.file_uploader("Query image", type=["png", "jpg", "jpeg", "webp", "bmp"],
                                  key="search_image")
            target = c2.radio("Search among", ["image", "text"], key="search_image_target",
                              horizontal=True)
            if up is not None:
                data_bytes = up.getvalue()
                c1.image(data_bytes, caption=up.name, width=128)
                with ui.user_errors():
                    show_results(searchinterp.image_query(fp, name, up.name, data_bytes,
                                                          target, k), key="search-image")
    with by_item:
        c1, c2, c3 = st.columns([1, 1, 1])
        mod = c1.radio("Query item", ["image", "text"], key="search_item_mod", horizontal=True)
        n_rows = len(loaded.image) if mod == "image" else len(loaded.text)
        row = int(c2.number_input(f"{mod} row (0 to {n_rows - 1})", 0, n_rows - 1, 0,
                                  key="search_item_row"))
        target = c3.radio("Search among", ["image", "text"], key="search_item_target",
                          horizontal=True)
        figures.gallery([(thumb(row) if mod == "image" else None,
                          f"query: {item_label(mod, row)}")], columns=4)
        with ui.user_errors():
            show_results(searchinterp.item_query(fp, name, mod, row, target, k),
                         key="search-item")

# ------------------------------------------------------------------ SLERP vs vSLERP
st.subheader("SLERP vs vSLERP (Sec. 7.2, Fig. 12)")
st.caption("SLERP rotates around the origin; because CLIP embeddings sit on a shell around "
           "an offset mean m, its path cuts inside the shell. vSLERP rotates around α·m "
           "(α = 1: the mean itself) and stays on the shell, so the items it passes are "
           "typical of the modality.")
c1, c2, c3 = st.columns(3)
imod = c1.radio("Interpolate between two", ["image", "text"], key="interp_mod",
                horizontal=True)
n_rows = len(loaded.image) if imod == "image" else len(loaded.text)
row_a = int(c2.number_input("Start row", 0, n_rows - 1, 0, key="interp_a"))
row_b = int(c3.number_input("End row", 0, n_rows - 1, min(1, n_rows - 1), key="interp_b"))
with box:
    alpha = st.slider("vSLERP centre α (α·m)", 0.0, 2.0, 1.0, 0.05, key="interp_alpha")
    steps = st.slider("Points along each path", 3, 11, 7, key="interp_steps")
if row_a == row_b:
    st.info("Pick two different rows to interpolate between.")
else:
    with ui.user_errors():
        pth = searchinterp.paths(fp, loaded, imod, row_a, row_b, float(alpha), int(steps))
    thetas = pth["thetas"]
    fig = go.Figure()
    for key, label in (("slerp", "SLERP (around 0)"), ("vslerp", f"vSLERP (around {alpha:g}·m)")):
        fig.add_trace(go.Scatter(x=thetas, y=pth[key]["cos_to_mean"], mode="lines+markers",
                                 name=label, hovertemplate="θ=%{x:.2f}<br>cos(m, x)=%{y:.4f}"
                                                           "<extra>" + label + "</extra>"))
    fig.update_layout(xaxis_title="θ (0 = start, 1 = end)",
                      yaxis_title=f"cos(m, x(θ)), m = {imod} mean")
    figures.show(fig, "Double-Ellipsoid Sec. 7.2 / Fig. 12: cosine of each interpolated point "
                      "to the modality mean, a proxy for conformity (Def. 2). SLERP around "
                      "the origin cuts inside the shell, towards the mean direction; vSLERP "
                      "around α·m keeps ‖x − m‖ between the endpoints' (on the shell at "
                      "α = 1).", key="interp-conformity", height=320)
    left, right = st.columns(2)
    for col, key, label in ((left, "slerp", "SLERP"), (right, "vslerp", "vSLERP")):
        with col:
            st.markdown(f"**{label}: nearest image and caption at each θ**")
            res = pth[key]
            figures.gallery([(thumb(r), f"θ={t:.2f} · cos {c:.3f}") for t, r, c in
                             zip(thetas, res["nearest_image"], res["nearest_image_cos"])],
                            columns=min(4, len(thetas)))
    table = pd.DataFrame({"theta": thetas})
    for key in ("slerp", "vslerp"):
        res = pth[key]
        table[f"{key} cos(m, x)"] = res["cos_to_mean"]
        table[f"{key} nearest image"] = [item_label("image", r) for r in res["nearest_image"]]
        table[f"{key} nearest caption"] = [item_label("text", r) for r in res["nearest_text"]]
        table[f"{key} caption cos"] = res["nearest_text_cos"]
    figures.table(table, key="interp-paths",
                  caption="Nearest image and caption (cosine) to each point of both paths.")

# ------------------------------------------------------------------ blur (Fig. 7)
st.subheader("The blur experiment (Sec. 5, Fig. 7)")
st.caption("Gaussian vectors N(c, I) in 512 dimensions. With c at the origin, the item least "
           "similar to the mean is about as similar to every other item as any item is; "
           "moving c away from the origin (c = s·(10, 5, 5, 0, …), the paper's s = 1) "
           "makes far-from-mean items similar to all others, as blurred images are in CLIP.")
with box:
    scale = st.slider("Centre offset s (c = s·(10, 5, 5, 0, …))", 0.0, 3.0, 1.0, 0.25,
                      key="blur_scale")
res = searchinterp.blur(float(scale), 1000, 512, 0)
fig = figures.histograms({"cos(m, v)": res.cos_to_mean, "cos(v_far, v)": res.cos_to_extreme},
                         x_title="cosine similarity", y_title="vectors", symbol="cos")
figures.show(fig, f"Double-Ellipsoid Fig. 7 (bottom): centre s = {scale:g}; v_far is the "
                  f"vector least similar to the mean m (row {res.extreme_index}). Mean "
                  f"cos(v_far, v) = {np.mean(res.cos_to_extreme):.3f}, mean cos(m, v) = "
                  f"{np.mean(res.cos_to_mean):.3f}.", key="blur", height=340)
