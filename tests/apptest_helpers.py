"""Reading what AppTest rendered (metrics, plotly figures and their arrays,
errors, user strings that leaked into markup, modality colours) and changing
every control of a page once."""

from __future__ import annotations

import base64
import json
import time
from typing import Any, NamedTuple

import numpy as np


def open_page(page, dataset=None, *, timeout: int = 300):
    """``page`` run once in a new AppTest session, on ``dataset`` when given
    (else the page's default dataset)."""
    from streamlit.testing.v1 import AppTest

    at = AppTest.from_file(str(page), default_timeout=timeout)
    if dataset is not None:
        at.session_state["dataset"] = dataset
    return at.run()


def metrics(at) -> dict:
    return {m.label: m.value for m in at.metric}


def figures(at) -> list[dict]:
    """Every plotly chart on the page as its JSON spec, in page order."""
    return [json.loads(c.proto.spec) for c in at.get("plotly_chart")]


def arr(v) -> np.ndarray:
    """A plotly JSON array: a list, or plotly's typed-array form {dtype, bdata[, shape]}."""
    if isinstance(v, dict) and "bdata" in v:
        a = np.frombuffer(base64.b64decode(v["bdata"]), dtype=np.dtype(v["dtype"]))
        if "shape" in v:
            a = a.reshape([int(x) for x in str(v["shape"]).split(",")])
        return a.astype(float)
    return np.array(v, dtype=float)


def errors(at, allowed=()) -> list[str]:
    """Error boxes and exceptions on the page, except messages containing one of
    ``allowed``."""
    found = [str(e.value) for e in at.error] + [str(e.value) for e in at.exception]
    return [e for e in found if not any(a in e for a in allowed)]


# ------------------------------------------------------------- user strings and colours

# Elements whose text Streamlit renders as markdown.
MARKDOWN_KINDS = ("markdown", "caption", "info", "warning", "error", "success", "title",
                  "header", "subheader")


def markup_leaks(at, strings) -> list[tuple[str, str, str]]:
    """(element kind, string, element text) wherever one of ``strings`` reached a
    markdown-rendering element unescaped (markdown, captions, alerts, headers,
    metric labels, image captions): it would render as bold text / a link /
    LaTeX / HTML. [] when none does."""
    out = []
    for kind in MARKDOWN_KINDS:
        for el in at.get(kind):
            value = str(getattr(el, "value", ""))
            out += [(kind, s, value[:120]) for s in strings if s in value]
    for m in at.metric:
        out += [("metric", s, m.label) for s in strings if s in m.label]
    for img in at.get("image"):
        out += [("image caption", s, c) for c in img.captions for s in strings if s in c]
    return out


def plain_texts(at) -> list[str]:
    """Everything drawn with st.text (plain text)."""
    return [str(t.value) for t in at.get("text")]


def shown_as_text(at, raw: str) -> bool:
    """True when ``raw`` appears verbatim in a plain-text element (st.text) or a
    dataframe cell."""
    if any(raw in t for t in plain_texts(at)):
        return True
    for df in at.dataframe:
        v = df.value
        if any(raw in str(c) for col in v.columns if v[col].dtype == object
               for c in v[col]):
            return True
    return False


def figure_strings(fig: dict) -> list[str]:
    """Trace names and hover texts of a plotly figure spec (plotly renders HTML in them)."""
    out = []
    for tr in fig.get("data", []):
        out.append(str(tr.get("name", "")))
        for k in ("text", "hovertext"):
            v = tr.get(k)
            if isinstance(v, str):
                out.append(v)
            elif isinstance(v, list):
                out += [str(x) for x in v]
    return out


IMAGE_BLUE, TEXT_RED = "#1f77b4", "#d62728"


def wrong_modality_colours(figs: list[dict]) -> list[tuple]:
    """Traces that draw one modality (named image... / text... / caption...)
    in another colour than image blue / text red."""
    bad = []
    for n, fig in enumerate(figs):
        for tr in fig.get("data", []):
            name = str(tr.get("name", "")).lower()
            want = (IMAGE_BLUE if name.startswith("image") else
                    TEXT_RED if name.startswith(("text", "caption")) else None)
            if want is None:
                continue
            for part in ("marker", "line"):
                c = (tr.get(part) or {}).get("color")
                if isinstance(c, str) and c.lower() != want:
                    bad.append((n, tr.get("name"), part, c))
            if not isinstance((tr.get("marker") or {}).get("color"), str):
                bad.append((n, tr.get("name"), "marker", "no colour set"))
    return bad


def assert_clean(at) -> None:
    """No exception, no error box, and every modality in its colour."""
    assert not errors(at), errors(at)
    bad = wrong_modality_colours(figures(at))
    assert not bad, bad


# ------------------------------------------------------------- every control once

# Widget kinds AppTest can drive, in the order they are changed.
CONTROL_KINDS = ("multiselect", "slider", "select_slider", "number_input", "radio",
                 "selectbox", "checkbox", "toggle", "text_input", "button")
# Changed last: it opens another dataset, where the controls differ.
LAST = ("dataset_select",)
# Widgets a walk of a whole page usually leaves alone: the dataset picker
# (chosen by the caller), the presentation switch (tested on its own) and the
# UMAP row count (changing it redoes long work).
SEPARATELY_TESTED = ("dataset_select", "presentation_switch", "umap_rows")
# Text typed into a text input the caller gives no text for.
DEFAULT_TEXT = "a red circle"


class Change(NamedTuple):
    key: str            # the widget key; "kind:label" for a widget without one
    label: str
    value: Any          # what it was set to ("click" for a button)
    seconds: float      # the rerun after the change


def _as_option(w, label: str, index: int):
    """A value that ``w`` (radio, selectbox, select_slider) shows as ``label``:
    the label itself, the label as the current value's type, or the option's
    index; None when format_func cannot be inverted that way."""
    f = w.format_func
    cur = w.value[0] if isinstance(w.value, (tuple, list)) and w.value else w.value
    candidates = [label, index]
    if isinstance(cur, (int, float)) and not isinstance(cur, bool):
        try:
            candidates.insert(1, type(cur)(label))
        except ValueError:
            pass
    for c in candidates:
        try:
            if str(f(c)) == label:
                return c
        except Exception:  # noqa: BLE001 - AppTest falls back to a str label itself
            if isinstance(c, str):
                return c
    return None


def _label_of(w, v) -> str:
    try:
        return str(w.format_func(v))
    except Exception:  # noqa: BLE001
        return str(v)


def _new_value(kind: str, w, texts: dict):
    """A different valid value for ``w``; None to leave it alone."""
    v = w.value
    if kind in ("checkbox", "toggle"):
        return not v
    if kind == "button":
        return "click"
    if kind == "text_input":
        return texts.get(w.key, DEFAULT_TEXT)
    if kind == "multiselect":
        opts = list(w.options)
        cur = [_label_of(w, x) for x in v]
        alt = [(k, o) for k, o in list(enumerate(opts))[::-1] if o not in cur][:1]
        if not alt:
            return []
        add = _as_option(w, alt[0][1], alt[0][0])
        return None if add is None else [*v, add]
    if kind in ("radio", "selectbox"):
        opts = list(w.options)
        cur = w.index if v is not None else None
        others = [k for k in range(len(opts)) if k != cur]
        if not others:
            return None
        k = others[-1]
        return _as_option(w, opts[k], k)
    if kind == "select_slider":
        opts = list(w.options)
        if isinstance(v, (tuple, list)):
            lo, hi = (opts.index(_label_of(w, x)) for x in v)
            if hi - lo < 1:
                return None
            pick = (lo + 1, hi) if hi - lo > 1 else (lo, lo)
            new = [_as_option(w, opts[k], k) for k in pick]
            return None if None in new else tuple(new)
        cur = _label_of(w, v)
        k = 0 if cur != opts[0] else len(opts) - 1
        return _as_option(w, opts[k], k)
    if kind == "slider":
        step = w.step or 1
        if isinstance(v, (tuple, list)):
            a, b = v
            if not a + step < b:
                return None
            a = a + 5 * step if a + 5 * step < b else a + step
            return (type(v[0])(round(a, 10)), b)
        return w.max if v != w.max else w.min
    if kind == "number_input":
        step = w.step or 1
        hi = w.max if w.max is not None else v + step
        lo = w.min if w.min is not None else v - step
        new = min(max(v + step if v + step <= hi else v - step, lo), hi)
        return type(v)(round(new, 10)) if isinstance(v, float) else type(v)(new)
    raise AssertionError(kind)


def _next_control(at, done, skip, kinds):
    """The first control not yet changed, skipped or disabled (the dataset
    picker after all others): (kind, key, widget), or None."""
    later = None
    for kind in kinds:
        for w in at.get(kind):
            key = w.key or f"{kind}:{w.label}"
            if (key in done or key in skip or getattr(w, "disabled", False)
                    or key.startswith(("dl-", "csv-"))):
                continue
            if key not in LAST:
                return kind, key, w
            later = later or (kind, key, w)
    return later


def walk_controls(at, *, skip=("dataset_select",), texts=None, buttons: bool = False,
                  before_run=None, limit: int | None = None):
    """Change every control of the rendered page once -- toggles, checkboxes,
    select boxes, multiselects, radios, sliders (a range too), select sliders,
    number inputs, text inputs (``texts[key]``, else DEFAULT_TEXT) and, with
    ``buttons``, buttons (one click) -- rerunning after each; yields a Change
    per rerun. Checks nothing: see change_every_control.

    Widgets are looked up again after every run (a change can reveal or remove
    others); each key is changed at most once; keys in ``skip`` and disabled
    widgets are left alone; the dataset picker goes last. ``before_run()`` is
    called just before each rerun (benchmarks use it); ``limit`` caps the
    number of changes.
    """
    texts = texts or {}
    kinds = CONTROL_KINDS if buttons else CONTROL_KINDS[:-1]
    done: set[str] = set()
    n = 0
    while limit is None or n < limit:
        nxt = _next_control(at, done, skip, kinds)
        if nxt is None:
            return
        kind, key, w = nxt
        done.add(key)
        new = _new_value(kind, w, texts)
        if new is None:
            continue
        if kind == "button":
            w.click()
        else:
            w.set_value(new)
        if before_run is not None:
            before_run()
        t0 = time.perf_counter()
        at.run()
        n += 1
        yield Change(key, w.label, new, time.perf_counter() - t0)


def change_every_control(at, *, skip=("dataset_select",), texts=None, buttons: bool = False,
                         allowed_errors=(), check=None, timings=None, before_run=None,
                         ) -> list[str]:
    """walk_controls, asserting that the page shows no exception and no error
    box (except messages containing one of ``allowed_errors``) before the first
    change and after every one; ``check(at)`` then runs after each change.
    ``timings`` (a list) receives (key, seconds) per rerun. Returns the keys
    changed, in order ("kind:label" for a widget without a key)."""
    bad = errors(at, allowed_errors)
    assert not bad, ("before any change", bad)
    changed = []
    for ch in walk_controls(at, skip=skip, texts=texts, buttons=buttons,
                            before_run=before_run):
        bad = errors(at, allowed_errors)
        assert not bad, f"after setting {ch.key!r} to {ch.value!r}: {bad}"
        if check is not None:
            check(at)
        if timings is not None:
            timings.append((ch.key, ch.seconds))
        changed.append(ch.key)
    return changed
