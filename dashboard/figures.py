"""Drawing helpers every page uses: one palette and plotly template, figures
with captions and self-contained downloads, tables with CSV download, and
presentation mode (large everything, no chrome; kept across pages and reloads)."""

from __future__ import annotations

import functools
import re

import pandas as pd
import plotly.graph_objects as go
import plotly.io as pio
import streamlit as st

from clipgeom.safety import csv_safe

# Above this many points a scatter is drawn from a seeded sample (WebGL below it too).
MAX_SCATTER_POINTS = 20_000

# ---------------------------------------------------------------- one palette
# Image = blue, text = red on every page; further datasets/models/series take
# the next colours of this one qualitative palette (plotly's D3 / tab10 order).
PALETTE = ["#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b",
           "#e377c2", "#7f7f7f", "#bcbd22", "#17becf"]
MODALITY_COLOURS = {"image": PALETTE[0], "text": PALETTE[1]}
# One continuous scale whenever both modalities are coloured by one value.
VALUE_SCALE = "Viridis"


def colour(key: str | int) -> str:
    """The product's colour for a modality name ("image"/"text") or a series index."""
    if isinstance(key, str):
        return MODALITY_COLOURS.get(modality_of(key) or "", PALETTE[2])
    return PALETTE[int(key) % len(PALETTE)]


def modality_of(trace_name: str | None) -> str | None:
    """"image"/"text" when a trace's name says which modality it draws
    ("image", "text embeddings", "captions", "images (exact)"), else None."""
    name = (trace_name or "").strip().lower()
    for word, mod in (("image", "image"), ("caption", "text"), ("text", "text")):
        if name == word or name.startswith(word):
            return mod
    return None


PRESENT_KEY = "presentation_on"   # plain session key: widget keys vanish on page change
QUERY_KEY = "present"             # ?present=1 keeps it across reloads and shared links


def _template(big: bool) -> go.layout.Template:
    size = 22 if big else 13
    base = go.layout.Template(pio.templates["plotly_white"])   # grid, white background
    base.layout.update(go.Layout(
        colorway=PALETTE,
        font=dict(size=size),
        title=dict(font=dict(size=size + 4)),
        legend=dict(font=dict(size=size)),
        xaxis=dict(title=dict(font=dict(size=size + 1)), tickfont=dict(size=size - 1)),
        yaxis=dict(title=dict(font=dict(size=size + 1)), tickfont=dict(size=size - 1)),
        hoverlabel=dict(font=dict(size=size)),
        coloraxis=dict(colorscale=VALUE_SCALE),
    ))
    return base


pio.templates["clipgeom"] = _template(False)
pio.templates["clipgeom_talk"] = _template(True)


def presentation_mode() -> bool:
    return bool(st.session_state.get(PRESENT_KEY, False))


def _present_changed() -> None:
    st.session_state[PRESENT_KEY] = bool(st.session_state.get("presentation_switch"))


def presentation_toggle() -> None:
    """The switch, on every page. The state lives in a plain session key and in
    the URL (``?present=1``), so it survives page changes and reloads."""
    if PRESENT_KEY not in st.session_state:
        st.session_state[PRESENT_KEY] = st.query_params.get(QUERY_KEY) == "1"
    on = presentation_mode()
    st.session_state["presentation_switch"] = on
    where = st.columns([3, 1])[1] if on else st.sidebar   # the sidebar is hidden when on
    where.toggle("Presentation mode", key="presentation_switch", on_change=_present_changed,
                 help="Large fonts, markers and figures; sidebar and toolbar hidden: for "
                      "talks. Kept across pages and in the URL.")
    st.markdown(_BASE_CSS, unsafe_allow_html=True)
    if on:
        st.query_params[QUERY_KEY] = "1"
        st.markdown(_TALK_CSS, unsafe_allow_html=True)
    elif st.query_params.get(QUERY_KEY) is not None:
        del st.query_params[QUERY_KEY]


# Always: metric labels wrap instead of being cut ("SVM accuracy, top two featur...").
_BASE_CSS = """<style>
[data-testid='stMetricLabel'] [data-testid='stMarkdownContainer'] p,
[data-testid='stMetricLabel'] div {white-space: normal; overflow: visible; text-overflow: clip;}
[data-testid='stMetricLabel'] {height: auto;}
</style>"""

# Presentation CSS: hide the chrome, enlarge text and metrics, never truncate labels.
_TALK_CSS = """<style>
[data-testid='stSidebar'], [data-testid='stSidebarCollapsedControl'],
[data-testid='stToolbar'], [data-testid='stHeader'], [data-testid='stDecoration'] {display: none;}
.block-container {padding-top: 1rem; max-width: 100%;}
[data-testid='stMarkdownContainer'] p, [data-testid='stMarkdownContainer'] li,
[data-testid='stCaptionContainer'], [data-testid='stWidgetLabel'] p {font-size: 1.3rem;}
[data-testid='stMetricValue'], [data-testid='stMetricValue'] [data-testid='stMarkdownContainer'] p
  {font-size: 2.6rem; line-height: 1.15;}
[data-testid='stMetricValue'] > div {overflow: visible; white-space: normal;}
[data-testid='stMetricLabel'] [data-testid='stMarkdownContainer'] p, [data-testid='stMetricLabel'] div {
  font-size: 1.25rem; white-space: normal; overflow: visible; text-overflow: clip;}
[data-testid='stMetricLabel'] {height: auto; min-height: 1.5rem;}
.block-container .talk-sentence {font-size: 1.9rem;}
[data-testid='stTable'] td, [data-testid='stTable'] th {font-size: 1.15rem;}
.stDownloadButton button p, .stButton button p {font-size: 1.1rem; white-space: nowrap;}
.stDownloadButton button, .stButton button {min-width: max-content;}
</style>"""


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")[:60] or "figure"


def style(fig: go.Figure, *, height: int = 420) -> go.Figure:
    """The product's look on any figure: the template (fonts, palette), the
    modality colours on traces named after a modality, and in presentation
    mode larger markers and lines. One mechanism for every page."""
    big = presentation_mode()
    scale = 1.7 if big else 1.0
    for tr in fig.data:
        mod = modality_of(getattr(tr, "name", None))
        marker = getattr(tr, "marker", None)
        if mod and marker is not None and not _is_array(marker.color):
            marker.color = MODALITY_COLOURS[mod]
        line = getattr(tr, "line", None)
        if mod and line is not None and tr.type in ("scatter", "scattergl") \
                and "lines" in (tr.mode or "") and not _is_array(line.color):
            line.color = MODALITY_COLOURS[mod]
        if big and marker is not None and tr.type in ("scatter", "scattergl") \
                and isinstance(marker.size, (int, float)):
            marker.size = marker.size * scale
        if big and line is not None and tr.type in ("scatter", "scattergl") \
                and isinstance(line.width, (int, float)):
            line.width = line.width * scale
    fig.update_layout(template="clipgeom_talk" if big else "clipgeom",
                      height=int(height * (1.35 if big else 1.0)),
                      margin=dict(t=50 if big else 40, l=10, r=10, b=10))
    return fig


def _is_array(value) -> bool:
    return value is not None and not isinstance(value, str)


@functools.lru_cache(maxsize=1)
def _plotly_js() -> str:
    from plotly.offline import get_plotlyjs
    return get_plotlyjs()


def standalone_html(fig: go.Figure) -> str:
    """The figure as one self-contained HTML file (plotly.js inlined): it opens
    offline, in a slide deck or an e-mail attachment."""
    return fig.to_html(include_plotlyjs=True, full_html=True)


def show(fig: go.Figure, caption: str, *, key: str, height: int = 420,
         on_select=None, selection_mode=("box", "lasso", "points")):
    """Draw a plotly figure with its paper citation below and an HTML download.

    ``caption`` should cite the paper figure/equation it reproduces. With
    ``on_select="rerun"`` the chart's box/lasso/click selection is returned.
    """
    style(fig, height=height)
    kwargs = {}
    if on_select is not None:
        kwargs = dict(on_select=on_select, selection_mode=list(selection_mode))
    # theme=None: Streamlit's own chart theme would override the template's fonts.
    event = st.plotly_chart(fig, width="stretch", key=f"chart-{key}", theme=None, **kwargs)
    st.caption(caption)
    # Its own row at its own width: in a third-width column a side-by-side
    # button was cut to "H...". The HTML (plotly.js inlined, ~4 MB) is built
    # only when the user clicks.
    st.download_button("HTML", functools.partial(standalone_html, fig),
                       file_name=f"{_slug(key)}.html", mime="text/html",
                       key=f"dl-{key}", on_click="ignore", icon=":material/download:",
                       help="Download the interactive figure (self-contained, opens offline)")
    return event


def table(df: pd.DataFrame, *, key: str, caption: str | None = None, height=None) -> None:
    """A dataframe with a CSV download (cells neutralised against formula injection)."""
    kwargs = {} if height is None else {"height": height}
    st.dataframe(df, width="stretch", hide_index=True, **kwargs)
    if caption:
        st.caption(caption)
    st.download_button("CSV", functools.partial(lambda d: csv_safe(d).to_csv(index=False), df),
                       file_name=f"{_slug(key)}.csv", mime="text/csv", key=f"csv-{key}",
                       on_click="ignore", icon=":material/download:")


_BOX = "_controls_box"


def open_controls():
    """Create this run's controls container (``ui.page_header`` calls it first):
    the sidebar, or in presentation mode (sidebar hidden) a folded expander at
    the top of the page. Later ``controls()`` calls return the same container."""
    box = st.expander("Dataset & controls", expanded=False) if presentation_mode() \
        else st.sidebar
    st.session_state[_BOX] = box      # replaced on every run by page_header
    return box


def controls():
    """Where a page puts its controls (see ``open_controls``)."""
    if presentation_mode() and _BOX in st.session_state:
        return st.session_state[_BOX]
    return st.sidebar


def gallery(items: list[tuple], *, columns: int = 4) -> None:
    """A grid of (thumbnail path or None, label) cards; labels are user data,
    shown as plain text (never markdown). Thumbnails keep a fixed size (larger
    in presentation mode) rather than stretching 64-px images across a column."""
    width = 200 if presentation_mode() else 150
    grid = st.columns(columns)
    for k, (thumb, label) in enumerate(items):
        with grid[k % columns]:
            if thumb is not None:
                st.image(str(thumb), width=width)
            st.text(str(label))


def histograms(series: dict, *, x_title: str, y_title: str = "items", nbins: int = 60,
               symbol: str = "x") -> go.Figure:
    """Overlaid histograms of several named value arrays (e.g. image vs text)."""
    fig = go.Figure()
    for k, (name, values) in enumerate(series.items()):
        fig.add_trace(go.Histogram(x=values, name=name, opacity=0.6, nbinsx=nbins,
                                   marker_color=colour(name if modality_of(name) else k),
                                   hovertemplate=f"{name}<br>{symbol}≈%{{x:.3f}}<br>"
                                                 "count=%{y}<extra></extra>"))
    fig.update_layout(barmode="overlay", xaxis_title=x_title, yaxis_title=y_title)
    return fig
