"""Linked exploration: box/lasso/click selection on any item scatter drives a
panel of thumbnails and captions, how the selection differs from the rest,
item details with nearest neighbours, a CSV of ids and "save as dataset".

An item scatter names its traces by modality ("image"/"text") and carries the
dataset row of each point in ``customdata`` (first column when 2-D); that is
all this module needs to map a selection back to rows.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import plotly.graph_objects as go
import streamlit as st

from clipgeom import conformity, interpolate, store, subset
from clipgeom._chunks import row_norms
from clipgeom.safety import csv_safe

from . import data, figures, ui

PAGE_SIZE = 12          # thumbnails per page of the selection gallery
URL_MAX_ROWS = 200      # larger selections are not written into the URL
SKIP_COLUMNS = {"image_id", "text_id", "source", "thumbnail", "caption"}


# ---------------------------------------------------------------- event -> rows
def _get(obj, key, default=None):
    if isinstance(obj, dict):
        return obj.get(key, default)
    return getattr(obj, key, default)


def rows_from_event(event, fig: go.Figure) -> dict[str, np.ndarray]:
    """{"image": rows, "text": rows} selected in a plotly selection event.

    ``event`` is what ``st.plotly_chart(on_select="rerun")`` returns (or a
    dict of the same shape); points of traces that are not named after a
    modality, or carry no row in ``customdata``, are ignored.
    """
    out = {"image": [], "text": []}
    sel = _get(event, "selection") or {}
    for p in _get(sel, "points", None) or []:
        curve = _get(p, "curve_number")
        if curve is None or not 0 <= int(curve) < len(fig.data):
            continue
        mod = figures.modality_of(fig.data[int(curve)].name)
        cd = _get(p, "customdata")
        if isinstance(cd, (list, tuple)):
            cd = cd[0] if cd else None
        if mod is None or cd is None:
            continue
        try:
            out[mod].append(int(cd))
        except (TypeError, ValueError):
            continue
    return {m: np.unique(np.asarray(v, dtype=np.int64)) for m, v in out.items()}


# ---------------------------------------------------------------- the URL
def encode_rows(key: str, rows: dict) -> str | None:
    """``chart|image:1,2,3;text:4`` or None when the selection is too large for a URL."""
    if sum(len(v) for v in rows.values()) > URL_MAX_ROWS:
        return None
    parts = [f"{m}:{','.join(str(int(r)) for r in rows[m])}" for m in ("image", "text")
             if len(rows[m])]
    return f"{key}|{';'.join(parts)}"


def decode_rows(text: str, key: str, n_rows: dict) -> dict | None:
    """The rows of ``encode_rows`` for chart ``key`` (rows out of range dropped),
    or None when the text is for another chart or malformed."""
    try:
        chart_key, body = str(text).split("|", 1)
        if chart_key != key:
            return None
        out = {"image": [], "text": []}
        for part in filter(None, body.split(";")):
            mod, nums = part.split(":", 1)
            if mod in out:
                out[mod] = [int(x) for x in nums.split(",") if x.strip()]
    except ValueError:
        return None
    return {m: np.unique(np.asarray([r for r in v if 0 <= r < n_rows[m]], dtype=np.int64))
            for m, v in out.items()}


def keep_in_url(key: str, rows: dict) -> None:
    enc = encode_rows(key, rows)
    if enc is None:
        st.query_params.pop("sel", None)
    else:
        st.query_params["sel"] = enc


def from_url(key: str, loaded: data.Loaded) -> dict:
    """Rows a shared link selected in chart ``key`` (empty when none)."""
    empty = {"image": np.zeros(0, np.int64), "text": np.zeros(0, np.int64)}
    raw = st.query_params.get("sel")
    if raw is None:
        return empty
    rows = decode_rows(raw, key, {"image": loaded.image.shape[0], "text": loaded.text.shape[0]})
    return rows or empty


# ---------------------------------------------------------------- cached data
@st.cache_data(show_spinner=False, max_entries=8)
def item_measures(fingerprint: str, _loaded: data.Loaded) -> dict:
    """Raw norm and exact conformity (Double-Ellipsoid Def. 1, Eq. 10) of every row."""
    return {m: {"norm": row_norms(x), "conformity": conformity.exact_conformity(x)}
            for m, x in (("image", _loaded.image), ("text", _loaded.text))}


@st.cache_data(show_spinner=False, max_entries=8)
def item_tokens(fingerprint: str, name: str) -> dict:
    """Per row, the tokens a selection is summarised by: "column=value" of every
    categorical metadata column (comma lists split) for images and captions,
    and caption words; None for the in-memory generator."""
    if name == data.SYNTHETIC:
        return {"image": None, "text": None, "words": None}
    ds = store.open_dataset(name)

    def tokens(df: pd.DataFrame) -> list[list[str]]:
        cols = [c for c in df.columns if c not in SKIP_COLUMNS
                and (df[c].dtype == object or pd.api.types.is_string_dtype(df[c]))]
        out = [[] for _ in range(len(df))]
        for c in cols:
            for r, v in enumerate(df[c].tolist()):
                if v is None or (isinstance(v, float) and np.isnan(v)):
                    continue
                out[r].extend(f"{c}={p.strip()}" for p in str(v).split(",") if p.strip())
        return out

    return {"image": tokens(ds.images), "text": tokens(ds.texts),
            "words": subset.caption_words(ds.texts["caption"].tolist())}


# ---------------------------------------------------------------- drawing
def chart(fig: go.Figure, caption: str, *, key: str, loaded: data.Loaded,
          height: int = 480) -> dict[str, np.ndarray]:
    """An item scatter with box/lasso/click selection; draws the selection
    panel under it when something is selected. Returns the selected rows."""
    event = figures.show(fig, caption + " Drag a box or lasso to select items; click one "
                         "for its details.", key=key, height=height, on_select="rerun")
    rows = rows_from_event(event, fig)
    n = sum(len(v) for v in rows.values())
    if n:
        keep_in_url(key, rows)
    else:                      # a link that carries a selection of this chart
        rows = from_url(key, loaded)
        n = sum(len(v) for v in rows.values())
    if n:
        with ui.section("Selection"):
            panel(loaded, rows, key=key)
    return rows


def panel(loaded: data.Loaded, rows: dict[str, np.ndarray], *, key: str) -> None:
    """What a selection shows: its size, how it differs from the rest, a paged
    gallery, one item's details, the ids as CSV and "save as dataset"."""
    fp = loaded.fingerprint
    n_i, n_t = len(rows["image"]), len(rows["text"])
    with st.container(border=True):
        st.markdown(f"**Selection: {n_i:,} image(s), {n_t:,} caption(s)** "
                    f"of {loaded.image.shape[0]:,} and {loaded.text.shape[0]:,}")
        if n_i + n_t == 1:
            mod = "image" if n_i else "text"
            details(loaded, mod, int(rows[mod][0]), key=key)
            return
        measures = item_measures(fp, loaded)
        contrasts = []
        for mod in ("image", "text"):
            if len(rows[mod]):
                for what in ("norm", "conformity"):
                    c = subset.contrast(measures[mod][what], rows[mod], what)
                    contrasts.append({"modality": mod, "measure": f"mean {what}",
                                      "selected": c.selected, "rest": c.rest,
                                      "difference": c.difference})
        left, right = st.columns(2)
        with left:
            st.caption("How the selection differs from the rest")
            st.dataframe(pd.DataFrame(contrasts), hide_index=True, width="stretch")
        with right:
            _over_represented(loaded, rows)
        _gallery(loaded, rows, key=key)
        _export(loaded, rows, key=key)


def _over_represented(loaded: data.Loaded, rows: dict) -> None:
    toks = item_tokens(loaded.fingerprint, loaded.name)
    tables = []
    if toks["image"] is not None and len(rows["image"]):
        tables.append(("image metadata", subset.over_represented(toks["image"], rows["image"])))
    if toks["words"] is not None:
        trows = rows["text"]
        if not len(trows) and len(rows["image"]):       # the selected images' captions
            trows = _captions_of(loaded, rows["image"])
        if len(trows):
            tables.append(("caption words", subset.over_represented(toks["words"], trows)))
    if not tables:
        st.caption("No labels, metadata or captions to summarise the selection by.")
    for title, df in tables:
        st.caption(f"Most over-represented {title} (share in the selection vs the rest)")
        st.dataframe(df[["token", "selected", "rest", "selected_share", "rest_share"]],
                     hide_index=True, width="stretch",
                     column_config={"selected_share": st.column_config.NumberColumn(
                         format="percent"), "rest_share": st.column_config.NumberColumn(
                         format="percent")})


def _captions_of(loaded: data.Loaded, image_rows) -> np.ndarray:
    pairs = dict(zip(loaded.pair_image_rows.tolist(), loaded.pair_text_rows.tolist()))
    return np.asarray([pairs[r] for r in np.asarray(image_rows).tolist() if r in pairs],
                      dtype=np.int64)


def _gallery(loaded: data.Loaded, rows: dict, *, key: str) -> None:
    if loaded.name == data.SYNTHETIC:
        return
    ds = store.open_dataset(loaded.name)
    items = [("image", r) for r in rows["image"].tolist()] + \
            [("text", r) for r in rows["text"].tolist()]
    pages = max(1, -(-len(items) // PAGE_SIZE))
    page = 1
    if pages > 1:
        page = int(st.number_input(f"Page (of {pages})", 1, pages, 1, key=f"selpage-{key}"))
    caps = ds.texts["caption"]
    first = _captions_of(loaded, rows["image"])
    cap_of = dict(zip(_paired_images(loaded, first), first.tolist()))
    cards = []
    for mod, r in items[(page - 1) * PAGE_SIZE: page * PAGE_SIZE]:
        if mod == "image":
            t = cap_of.get(r)
            cards.append((ds.thumb_path(r), f"image {r}: " + (str(caps.iloc[t]) if t is not None
                                                              else str(ds.images['image_id'].iloc[r]))))
        else:
            iid = ds.texts["image_id"].iloc[r]
            irow = _image_row(ds, iid)
            cards.append((ds.thumb_path(irow) if irow is not None else None,
                          f"caption {r}: {caps.iloc[r]}"))
    figures.gallery(cards, columns=6)


def _paired_images(loaded: data.Loaded, text_rows: np.ndarray) -> list[int]:
    inv = dict(zip(loaded.pair_text_rows.tolist(), loaded.pair_image_rows.tolist()))
    return [inv[t] for t in text_rows.tolist()]


def _image_row(ds, image_id) -> int | None:
    if image_id is None:
        return None
    hits = np.flatnonzero(ds.images["image_id"].to_numpy() == image_id)
    return int(hits[0]) if hits.size else None


def ids_table(loaded: data.Loaded, rows: dict) -> pd.DataFrame:
    """One row per selected item: modality, row, id, caption (stored datasets)."""
    out = []
    ds = None if loaded.name == data.SYNTHETIC else store.open_dataset(loaded.name)
    for mod in ("image", "text"):
        for r in rows[mod].tolist():
            rec = {"modality": mod, "row": r, "id": "", "caption": ""}
            if ds is not None:
                if mod == "image":
                    rec["id"] = str(ds.images["image_id"].iloc[r])
                else:
                    rec["id"] = str(ds.texts["text_id"].iloc[r])
                    rec["caption"] = str(ds.texts["caption"].iloc[r])
            out.append(rec)
    return pd.DataFrame(out, columns=["modality", "row", "id", "caption"])


def _export(loaded: data.Loaded, rows: dict, *, key: str) -> None:
    ids = ids_table(loaded, rows)
    c1, c2 = st.columns([1, 2])
    c1.download_button("Selection as CSV", csv_safe(ids).to_csv(index=False),
                       file_name=f"{loaded.name}-selection.csv", mime="text/csv",
                       key=f"selcsv-{key}", on_click="ignore")
    if loaded.name == data.SYNTHETIC:
        return
    with c2.form(f"selsave-{key}", clear_on_submit=False, border=False):
        a, b = st.columns([2, 1], vertical_alignment="bottom")
        name = a.text_input("Save as a new dataset named", key=f"selname-{key}",
                            placeholder=f"{loaded.name}-subset")
        go_ = b.form_submit_button("Save subset")
    if go_:
        with ui.section("Save subset"):
            ds = subset.save_subset(store.open_dataset(loaded.name), name.strip(),
                                    rows["image"], rows["text"])
            st.success(f"Saved {ds.n_images:,} images and {ds.n_texts:,} captions as "
                       f"dataset '{ds.name}' (pick it in the dataset list).")


def details(loaded: data.Loaded, mod: str, row: int, *, key: str, k: int = 5) -> None:
    """One item: its thumbnail, captions, numbers and nearest neighbours in
    both modalities (exact cosine)."""
    measures = item_measures(loaded.fingerprint, loaded)
    ds = None if loaded.name == data.SYNTHETIC else store.open_dataset(loaded.name)
    vec = np.asarray((loaded.image if mod == "image" else loaded.text)[row])
    left, right = st.columns([1, 3])
    with left:
        if ds is not None:
            irow = row if mod == "image" else _image_row(ds, ds.texts["image_id"].iloc[row])
            if irow is not None and ds.thumb_path(irow) is not None:
                st.image(str(ds.thumb_path(irow)), width="stretch")
        st.metric("raw norm", f"{measures[mod]['norm'][row]:.3f}")
        st.metric("conformity", f"{measures[mod]['conformity'][row]:.4f}")
    with right:
        if ds is not None:
            if mod == "image":
                iid = ds.images["image_id"].iloc[row]
                st.caption(f"image {row} ({iid}); its captions:")
                for c in ds.texts.loc[ds.texts["image_id"] == iid, "caption"].tolist():
                    st.text(str(c))
            else:
                st.caption(f"caption {row}:")
                st.text(str(ds.texts["caption"].iloc[row]))
        for target in ("image", "text"):
            x = loaded.image if target == "image" else loaded.text
            excl = [row] if target == mod else []
            nn_rows, nn_cos = interpolate.nearest_cosine(vec, x, k, exclude=excl)
            recs = []
            for r, c in zip(nn_rows[0].tolist(), nn_cos[0].tolist()):
                if r < 0:
                    continue
                label = ""
                if ds is not None:
                    label = (str(ds.images["image_id"].iloc[r]) if target == "image"
                             else str(ds.texts["caption"].iloc[r]))
                recs.append({"row": r, "cosine": c, "item": label})
            st.caption(f"nearest {target}s (cosine)")
            st.dataframe(pd.DataFrame(recs), hide_index=True, width="stretch")
