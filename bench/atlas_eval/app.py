"""Benchmark app (not part of the dashboard): one large 2-D item scatter drawn
either with Apple's embedding-atlas Streamlit component (every point) or the
way clipgeom draws it today (plotly Scattergl on a seeded sample of at most
20,000 points, dashboard/figures.py MAX_SCATTER_POINTS).

    streamlit run bench/atlas_eval/app.py   then open  /?mode=atlas&n=100000
                                                    or /?mode=plotly&n=1000000

Driven by bench/atlas_vs_plotly.py (needs its own venv with embedding-atlas;
see /work/notes/atlas_findings.md). The selection returned by either chart is
shown under it, mapped back to dataset row indices per modality.
"""

from __future__ import annotations

import time

import numpy as np
import pandas as pd
import plotly.graph_objects as go
import streamlit as st

MAX_SCATTER_POINTS = 20_000            # same cap as dashboard/figures.py
COLOURS = {"image": "#1f77b4", "text": "#d62728"}

st.set_page_config(page_title="atlas vs plotly", layout="wide")


@st.cache_data(show_spinner=False, max_entries=2)
def points(n: int, seed: int = 0) -> pd.DataFrame:
    """Two Gaussian clusters; row i is 'image' for even i, 'text' for odd i
    (the two modalities of a paired dataset); a short caption per row."""
    rng = np.random.default_rng(seed)
    modality = np.where(np.arange(n) % 2 == 0, "image", "text")
    centre = np.where(modality == "image", -2.0, 2.0)
    x = (centre + rng.normal(0.0, 1.0, n)).astype(np.float32)
    y = (0.5 * centre + rng.normal(0.0, 0.8, n)).astype(np.float32)
    ids = pd.Series(np.arange(n)).astype(str)
    text = ("caption " + ids + " of a " + pd.Series(modality) + " item").astype(str)
    return pd.DataFrame({"x": x, "y": y, "modality": pd.Categorical(modality),
                         "row": np.arange(n, dtype=np.int64), "text": text})


def sample_rows(n: int, cap: int, seed: int) -> np.ndarray:
    """Seeded sorted sample of at most cap of range(n) (as clipgeom.projection)."""
    if n <= cap:
        return np.arange(n)
    return np.sort(np.random.default_rng(seed).choice(n, cap, replace=False))


def rows_from_predicate(df: pd.DataFrame, predicate: str | None) -> dict[str, np.ndarray]:
    """Dataset rows per modality matched by the SQL predicate the atlas returns.

    The predicate is text sent by the browser, so it runs in a DuckDB
    connection with external access off (no files, no network) over a view of
    this frame only; the component numbers rows 0..n-1 as ``__row_index__``."""
    import duckdb

    out = {"image": np.empty(0, np.int64), "text": np.empty(0, np.int64)}
    if not predicate:
        return out
    con = duckdb.connect(config={"enable_external_access": False})
    try:
        frame = df.assign(__row_index__=np.arange(len(df), dtype=np.int64))
        con.register("dataframe", frame)
        con.execute("SET lock_configuration = true")
        got = con.execute(f"SELECT __row_index__, modality FROM dataframe WHERE {predicate}"
                          ).df()
    finally:
        con.close()
    for m in out:
        out[m] = got.loc[got["modality"] == m, "__row_index__"].to_numpy(np.int64)
    return out


qp = st.query_params
mode = qp.get("mode", "plotly")
n = int(qp.get("n", "100000"))
t0 = time.perf_counter()
df = points(n)
st.caption(f"mode={mode} n={n:,} data built in {time.perf_counter() - t0:.2f}s")

if mode == "atlas":
    from embedding_atlas.streamlit import embedding_atlas

    frame = df[["x", "y", "modality", "text"]]
    if qp.get("strings", "object") == "object":
        # pandas 3 stores strings as pyarrow large_string; Streamlit ships them to
        # the component as Arrow LargeUtf8, which the component's bundled Arrow JS
        # rejects ('Unrecognized type: "LargeUtf8" (20)', blank chart). Object
        # columns are sent as Utf8. ?strings=native reproduces the failure.
        frame = frame.astype({"modality": object, "text": object})
    value = embedding_atlas(frame, x="x", y="y", text="text", labels="disabled", key="atlas")
    st.write("component value:", value)
    pred = (value or {}).get("predicate")
    if pred:
        t1 = time.perf_counter()
        rows = rows_from_predicate(df, pred)
        st.text(f"selected rows: image {len(rows['image']):,}, text {len(rows['text']):,} "
                f"(predicate evaluated in {time.perf_counter() - t1:.2f}s); "
                f"first image rows {rows['image'][:5].tolist()}")
else:
    idx = sample_rows(n, MAX_SCATTER_POINTS, 0)
    sub = df.iloc[idx]
    fig = go.Figure()
    for m in ("image", "text"):
        part = sub[sub["modality"] == m]
        fig.add_trace(go.Scattergl(x=part["x"], y=part["y"], mode="markers", name=m,
                                   customdata=part["row"].to_numpy(),
                                   hovertext=part["text"], hoverinfo="text",
                                   marker=dict(size=3, color=COLOURS[m], opacity=0.6)))
    fig.update_layout(height=700, dragmode="lasso", margin=dict(l=40, r=10, t=30, b=40))
    if len(idx) < n:
        st.caption(f"showing a seeded sample of {len(idx):,} of {n:,} points")
    event = st.plotly_chart(fig, key="plotly", on_select="rerun",
                            selection_mode=("box", "lasso"))
    pts = (event or {}).get("selection", {}).get("points", []) if event else []
    rows = {m: [] for m in ("image", "text")}
    for p in pts:
        cd = p.get("customdata")
        cd = cd[0] if isinstance(cd, (list, tuple)) else cd
        rows[fig.data[p["curve_number"]].name].append(int(cd))
    st.text(f"selected rows: image {len(rows['image']):,}, text {len(rows['text']):,}")
