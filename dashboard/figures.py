"""Drawing helpers every page uses: figures with captions and downloads,
tables with CSV download, and presentation mode (large fonts, no clutter)."""

from __future__ import annotations

import re

import pandas as pd
import plotly.graph_objects as go
import streamlit as st

# Above this many points a scatter is drawn from a seeded sample (WebGL below it too).
MAX_SCATTER_POINTS = 20_000


def presentation_mode() -> bool:
    return bool(st.session_state.get("presentation", False))


def presentation_toggle() -> None:
    """The sidebar switch; every page calls it so the choice follows the user."""
    st.sidebar.toggle("Presentation mode", key="presentation",
                      help="Large fonts and figures, controls folded away: for talks.")
    if presentation_mode():
        # Body text and labels only: headings keep their own (larger) sizes.
        st.markdown("<style>[data-testid='stMarkdownContainer'] p, "
                    "[data-testid='stCaptionContainer'], [data-testid='stWidgetLabel'] p "
                    "{font-size: 1.2rem;}</style>", unsafe_allow_html=True)


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")[:60] or "figure"


def show(fig: go.Figure, caption: str, *, key: str, height: int = 420) -> None:
    """Draw a plotly figure with its paper citation below and an HTML download.

    ``caption`` should cite the paper figure/equation it reproduces.
    """
    big = presentation_mode()
    fig.update_layout(height=int(height * (1.35 if big else 1.0)),
                      font=dict(size=20 if big else 13), margin=dict(t=40, l=10, r=10, b=10))
    st.plotly_chart(fig, width="stretch", key=f"chart-{key}")
    c1, c2 = st.columns([4, 1])   # wide enough for the button in half-width layouts
    c1.caption(caption)
    c2.download_button("HTML", fig.to_html(include_plotlyjs="cdn"),
                       file_name=f"{_slug(key)}.html", mime="text/html",
                       key=f"dl-{key}", help="Download the interactive figure")


def table(df: pd.DataFrame, *, key: str, caption: str | None = None, height=None) -> None:
    """A dataframe with a CSV download."""
    kwargs = {} if height is None else {"height": height}
    st.dataframe(df, width="stretch", hide_index=True, **kwargs)
    c1, c2 = st.columns([4, 1])   # wide enough for the button in half-width layouts
    if caption:
        c1.caption(caption)
    c2.download_button("CSV", df.to_csv(index=False), file_name=f"{_slug(key)}.csv",
                       mime="text/csv", key=f"csv-{key}")


def controls():
    """Where a page puts its controls: the sidebar, folded in presentation mode."""
    if presentation_mode():
        return st.sidebar.expander("Controls", expanded=False)
    return st.sidebar


def gallery(items: list[tuple], *, columns: int = 4) -> None:
    """A grid of (thumbnail path or None, label) cards; items without a
    thumbnail show their label alone."""
    if presentation_mode():
        columns = max(2, columns - 1)
    grid = st.columns(columns)
    for k, (thumb, label) in enumerate(items):
        with grid[k % columns]:
            if thumb is not None:
                st.image(str(thumb), caption=label, width="stretch")
            else:
                st.caption(label)


def histograms(series: dict, *, x_title: str, y_title: str = "items", nbins: int = 60,
               symbol: str = "x") -> go.Figure:
    """Overlaid histograms of several named value arrays (e.g. image vs text)."""
    fig = go.Figure()
    for name, values in series.items():
        fig.add_trace(go.Histogram(x=values, name=name, opacity=0.6, nbinsx=nbins,
                                   hovertemplate=f"{name}<br>{symbol}≈%{{x:.3f}}<br>"
                                                 "count=%{y}<extra></extra>"))
    fig.update_layout(barmode="overlay", xaxis_title=x_title, yaxis_title=y_title)
    return fig
