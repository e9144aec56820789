"""Talk: the papers' story as full-screen slides on the open dataset.

Next / previous by button or by the arrow keys (the buttons' shortcuts); the slide number is in the
URL (``?slide=3``), so a reload or a shared link opens the same slide.
"""

import html

import streamlit as st

from dashboard import data, figures, talk, ui

loaded = ui.page_header("talk")
st.markdown("<style>.talk-sentence {font-size: 1.5rem; line-height: 1.35;}</style>",
            unsafe_allow_html=True)

with ui.user_errors():
    rep = data.cached_report(loaded.fingerprint, loaded, loaded.default_temperature, 5000)
    slides = talk.build_slides(loaded, rep)

n = len(slides)
if "talk_slide" not in st.session_state:
    try:
        st.session_state["talk_slide"] = int(st.query_params.get("slide", 1)) - 1
    except ValueError:
        st.session_state["talk_slide"] = 0
st.session_state["talk_slide"] = min(max(st.session_state["talk_slide"], 0), n - 1)


def _move(step: int) -> None:
    st.session_state["talk_slide"] = min(max(st.session_state["talk_slide"] + step, 0), n - 1)


k = st.session_state["talk_slide"]
st.query_params["slide"] = str(k + 1)
s = slides[k]

with ui.section(s.title):
    st.title(s.title)
    left, right = st.columns([3, 1], vertical_alignment="center")
    left.markdown(f"<div class='talk-sentence'>{html.escape(s.sentence)}</div>",
                  unsafe_allow_html=True)   # our own sentence, escaped all the same
    right.metric(s.number_label, s.number)
    if s.note:
        st.warning(s.note)
    if s.figure is not None:
        figures.show(s.figure(), f"{s.cite} · dataset: {loaded.name}", key=f"talk-{s.key}",
                     height=420)

prev, where, nxt = st.columns([1, 4, 1])
prev.button("◀ Previous", key="talk_prev", on_click=_move, args=(-1,), disabled=k == 0,
            width="stretch", shortcut="Left")
upcoming = f" · next: {slides[k + 1].title}" if k + 1 < n else " · the end"
where.progress((k + 1) / n, text=f"slide {k + 1} of {n}{upcoming}  (← / → keys)")
nxt.button("Next ▶", key="talk_next", on_click=_move, args=(1,), disabled=k == n - 1,
           width="stretch", shortcut="Right")
