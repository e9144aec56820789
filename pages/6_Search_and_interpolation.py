"""Search & interpolation: FAISS search, SLERP vs vSLERP (Double-Ellipsoid
Sec. 7.2, Fig. 12) and the blur experiment (Sec. 5, Fig. 7).

Every user string (captions, file names, the typed query, image ids) is shown
as plain text (st.text, st.dataframe, figures.gallery), never as markdown."""

import numpy as np
import pandas as pd
import plotly.graph_objects as go
import streamlit as st
from plotly.subplots import make_subplots

from clipgeom.errors import InputError
from dashboard import data, figures, lossconf, searchinterp, ui

loaded = ui.page_header("search & interpolation")

st.title("Search & interpolation")
fp = loaded.fingerprint
stored = loaded.name != data.SYNTHETIC
name = loaded.name if stored else None
with ui.user_errors():                      # part of opening the dataset
    captions, _ = lossconf.captions_by_row(fp, name)
    images_df = lossconf.tables(fp, name)[0] if stored else None
image_ids = images_df["image_id"].astype(str).tolist() if images_df is not None else None
n_img, n_txt = len(loaded.image), len(loaded.text)

box = figures.controls()


def image_label(row: int) -> str:
    """An image result is named by its id (never by a caption it may not match)."""
    if row < 0:
        return "(none left)"
    return f"image {image_ids[row]}" if image_ids else f"image row {row}"


def caption_of(row: int) -> str:
    if row < 0:
        return "(none left)"
    return captions[row] if captions else f"text row {row}"


def thumb(row: int):
    return lossconf.thumb(name, int(row)) if stored and row >= 0 else None


def show_results(res: dict, key: str) -> None:
    """Image results: a gallery labelled by image id and score; caption results:
    the matched caption (the caption row that scored). Plain text throughout."""
    target = res["target"]
    rows = list(res["results"])
    if not rows:
        st.info("No results.")
        return
    st.text(f"{res['query']} → {len(rows)} nearest {target}s (cosine similarity, FAISS "
            f"{res['index_kind']} index)")
    if target == "image":
        table = pd.DataFrame([{"rank": r["rank"], "score": r["score"], "row": r["row"],
                               "image id": r["id"]} for r in rows])
        figures.gallery([(thumb(r["row"]), f"#{r['rank']} · image {r['id']} · "
                                           f"{r['score']:.3f}") for r in rows])
    else:
        table = pd.DataFrame([{"rank": r["rank"], "score": r["score"], "row": r["row"],
                               "text id": r["id"], "matched caption": r["label"]}
                              for r in rows])
    figures.table(table, key=key, caption="Search results (cosine similarity of the raw "
                                          "embeddings, L2-normalised).")


# ------------------------------------------------------------------ search
with ui.section("Nearest-neighbour search"):
    st.subheader("Nearest-neighbour search")
    max_k = int(max(1, min(48, max(n_img, n_txt))))
    with box:
        k = (st.slider("Results per search", 1, max_k, min(12, max_k), key="search_k")
             if max_k > 1 else 1)
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
            has_model, why = True, ""
        except InputError as exc:
            has_model, why = False, str(exc)
        with by_text, ui.section("Search by text"):
            if not has_model:
                st.info(why)
            else:
                c1, c2 = st.columns([3, 1])
                q = c1.text_input("Text query", key="search_text",
                                  placeholder="a small red circle at the top left")
                target = c2.radio("Search among", ["image", "text"],
                                  key="search_text_target", horizontal=True)
                if q.strip():
                    show_results(searchinterp.text_query(fp, name, q, target, k),
                                 key="search-text")
        with by_image, ui.section("Search by image"):
            if not has_model:
                st.info(why)
            else:
                c1, c2 = st.columns([3, 1])
                up = c1.file_uploader("Query image",
                                      type=["png", "jpg", "jpeg", "webp", "bmp"],
                                      key="search_image")
                target = c2.radio("Search among", ["image", "text"],
                                  key="search_image_target", horizontal=True)
                if up is not None:
                    data_bytes = up.getvalue()
                    c1.image(data_bytes, width=128)
                    c1.text(up.name)
                    show_results(searchinterp.image_query(fp, name, up.name, data_bytes,
                                                          target, k), key="search-image")
        with by_item, ui.section("Search from an item"):
            c1, c2, c3 = st.columns([1, 1, 1])
            mod = c1.radio("Query item", ["image", "text"], key="search_item_mod",
                           horizontal=True)
            n_rows = n_img if mod == "image" else n_txt
            row = int(c2.number_input(f"{mod} row (0 to {n_rows - 1})", 0, n_rows - 1, 0,
                                      key=f"search_item_row_{mod}"))
            target = c3.radio("Search among", ["image", "text"], key="search_item_target",
                              horizontal=True)
            figures.gallery([(thumb(row) if mod == "image" else None,
                              "query: " + (image_label(row) if mod == "image"
                                           else caption_of(row)))], columns=4)
            show_results(searchinterp.item_query(fp, name, mod, row, target, k),
                         key="search-item")


# ------------------------------------------------------------------ SLERP vs vSLERP
def path_gallery(pth: dict, key: str) -> None:
    """What lies nearest each point of one path: image thumbnails (labelled by
    id and cosine) and captions; an item that repeats the previous point's is
    marked instead of shown again."""
    res, thetas = pth[key], pth["thetas"]
    cards = []
    for t, r, c, rep in zip(thetas, res["nearest_image"], res["nearest_image_cos"],
                            res["nearest_image_repeat"]):
        if rep:
            cards.append((None, f"θ={t:.2f}: same image as the previous θ"))
        else:
            cards.append((thumb(int(r)), f"θ={t:.2f} · {image_label(int(r))} · cos {c:.3f}"))
    figures.gallery(cards, columns=min(6, len(cards)))
    caps = [("(same as above)" if rep else caption_of(int(r)))
            for r, rep in zip(res["nearest_text"], res["nearest_text_repeat"])]
    st.dataframe(pd.DataFrame({"θ": np.round(thetas, 3), "nearest caption": caps,
                               "cos": res["nearest_text_cos"]}),
                 hide_index=True, width="stretch")


with ui.section("SLERP vs vSLERP"):
    st.subheader("SLERP vs vSLERP (Sec. 7.2, Fig. 12)")
    st.caption("SLERP rotates around the origin; because CLIP embeddings sit on a shell "
               "around an offset mean m, its path cuts inside the shell. vSLERP rotates "
               "around α·m (α = 1: the mean itself) and stays on the shell, so the items it "
               "passes are typical of the modality.")
    with box:
        alpha = st.slider("vSLERP centre α (α·m)", 0.0, 2.0, 1.0, 0.05, key="interp_alpha")
        steps = st.slider("Points along each path", 3, 11, 7, key="interp_steps")
    c1, c2, c3, c4 = st.columns([1, 1, 1, 1])
    imod = c1.radio("Interpolate between two", ["image", "text"], key="interp_mod",
                    horizontal=True)
    n_rows = n_img if imod == "image" else n_txt
    if n_rows < 2:
        st.info(f"The dataset has {n_rows} {imod} row(s): interpolation needs two.")
    else:
        row_a = int(c2.number_input("Start row", 0, n_rows - 1, 0, key=f"interp_a_{imod}"))
        row_b = int(c3.number_input("End row", 0, n_rows - 1, 1, key=f"interp_b_{imod}"))
        leave_out = c4.checkbox("Leave out the endpoints", value=True, key="interp_leave_out",
                                help="Leave the two endpoints and the items paired with "
                                     "them out of the nearest items, so the galleries show "
                                     "what lies along the path, not the endpoints again.")
        if row_a == row_b:
            st.info("Pick two different rows to interpolate between.")
        else:
            pth = searchinterp.paths(fp, loaded, imod, row_a, row_b, float(alpha),
                                     int(steps), bool(leave_out))
            thetas = pth["thetas"]
            ends = [(thumb(r) if imod == "image" else None,
                     f"{which}: " + (image_label(r) if imod == "image" else caption_of(r)))
                    for which, r in (("start", row_a), ("end", row_b))]
            figures.gallery(ends, columns=4)
            fig = make_subplots(rows=1, cols=2, horizontal_spacing=0.1,
                                subplot_titles=["cos(m, x(θ))", "‖x(θ) − m‖"])
            for j, (key, label) in enumerate((("slerp", "SLERP (around 0)"),
                                              ("vslerp", f"vSLERP (around {alpha:g}·m)"))):
                for col, (field, sym) in enumerate((("cos_to_mean", "cos(m, x)"),
                                                    ("dist_to_mean", "‖x − m‖")), start=1):
                    fig.add_trace(go.Scatter(
                        x=thetas, y=pth[key][field], mode="lines+markers", name=label,
                        legendgroup=key, showlegend=col == 1,
                        line=dict(color=figures.colour(2 + j)),
                        marker=dict(color=figures.colour(2 + j)),
                        hovertemplate="θ=%{x:.2f}<br>" + sym + "=%{y:.4f}<extra>" + label
                                      + "</extra>"), row=1, col=col)
            fig.add_hline(y=pth["shell_radius"], line_dash="dot", row=1, col=2,
                          annotation_text="shell radius (mean ‖v − m‖)")
            fig.update_xaxes(title_text="θ (0 = start, 1 = end)")
            fig.update_yaxes(title_text=f"cos(m, x), m = {imod} mean", row=1, col=1)
            fig.update_yaxes(title_text="‖x − m‖", row=1, col=2)
            figures.show(fig, "Double-Ellipsoid Sec. 7.2 / Fig. 12: left, the cosine of each "
                              "interpolated point to the modality mean m, a proxy for "
                              "conformity (Def. 2); right, its distance to m (Eq. 1-4: the "
                              "shell radius). SLERP around the origin cuts inside the "
                              "shell; vSLERP around α·m keeps ‖x − m‖ between the "
                              "endpoints' (on the shell at α = 1).", key="interp-conformity",
                         height=340)
            by = pth.get("nearest_by", {})
            st.caption(f"Nearest images: {by.get('image', 'exact scan')}; nearest captions: "
                       f"{by.get('text', 'exact scan')}.")
            left, right = st.columns(2)
            for col, key, label in ((left, "slerp", "SLERP"), (right, "vslerp", "vSLERP")):
                with col:
                    st.markdown(f"**{label}: nearest image and caption at each θ**")
                    path_gallery(pth, key)
            table = pd.DataFrame({"theta": thetas})
            for key in ("slerp", "vslerp"):
                res = pth[key]
                table[f"{key} cos(m, x)"] = res["cos_to_mean"]
                table[f"{key} ||x - m||"] = res["dist_to_mean"]
                table[f"{key} nearest image row"] = res["nearest_image"]
                table[f"{key} nearest image"] = [image_label(int(r))
                                                 for r in res["nearest_image"]]
                table[f"{key} image cos"] = res["nearest_image_cos"]
                table[f"{key} nearest caption row"] = res["nearest_text"]
                table[f"{key} nearest caption"] = [caption_of(int(r))
                                                   for r in res["nearest_text"]]
                table[f"{key} caption cos"] = res["nearest_text_cos"]
            with st.expander("All numbers along both paths"):
                figures.table(table, key="interp-paths",
                              caption="Both paths: cos(m, x), ‖x − m‖ and the nearest "
                                      "image and caption (cosine) at each θ.")


# ------------------------------------------------------------------ blur (Fig. 7)
with ui.section("The blur experiment"):
    st.subheader("The blur experiment (Sec. 5, Fig. 7)")
    st.caption("Gaussian vectors N(c, I) in 512 dimensions. With c at the origin, the item "
               "least similar to the mean is about as similar to every other item as any "
               "item is; moving c away from the origin (c = s·(10, 5, 5, 0, …), the paper's "
               "s = 1) makes far-from-mean items similar to all others, as blurred images "
               "are in CLIP.")
    with box:
        scale = st.slider("Centre offset s (c = s·(10, 5, 5, 0, …))", 0.0, 3.0, 1.0, 0.25,
                          key="blur_scale")
    res = searchinterp.blur(float(scale), 1000, 512, 0)
    fig = figures.histograms({"cos(m, v)": res.cos_to_mean,
                              "cos(v_far, v)": res.cos_to_extreme},
                             x_title="cosine similarity", y_title="vectors", symbol="cos")
    figures.show(fig, f"Double-Ellipsoid Fig. 7 (bottom): centre s = {scale:g}; v_far is the "
                      f"vector least similar to the mean m (row {res.extreme_index}). Mean "
                      f"cos(v_far, v) = {np.mean(res.cos_to_extreme):.3f}, mean cos(m, v) = "
                      f"{np.mean(res.cos_to_mean):.3f}.", key="blur", height=340)
