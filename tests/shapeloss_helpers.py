"""Helpers for the page tests of Separability, Thin shell, Alpha shift & loss
and Conformity (tests/test_page_shape.py, tests/test_page_lossconf.py):
a tiny stored dataset and a sweep that changes every control of a page once."""

from __future__ import annotations

import time

import numpy as np
import pandas as pd

# Captions that would render as markup if a page passed them to markdown.
MARKUP_CAPTIONS = ["**bold** claim", "[click](http://x.invalid)", "# heading",
                   "<b>tag</b> & a_b_c *x*"]
SHARED_CAPTION = "a shape"        # many rows share it (as in the demo world)


def tiny_dataset(tmp_path, name: str = "tiny20", n: int = 20, d: int = 64, seed: int = 5):
    """A stored dataset of ``n`` pairs in ``d`` dimensions (n < d: fewer items than
    features), like the demo world in miniature:

    - captions with markup characters (they must show literally);
    - the last 8 captions are one text, "a shape", with one embedding (the same
      caption embeds the same) of the largest norm;
    - thumbnails for even image rows only; image sources with markup;
    - a concept frequency per image.

    Text row k is paired with image row k. Returns (image, text, captions).
    """
    from PIL import Image

    from clipgeom import store, synthetic

    syn = synthetic.two_shells(n, d, seed=seed)
    image = np.asarray(syn.image, np.float32).copy()
    text = np.asarray(syn.text, np.float32).copy()
    caps = [f"caption {k}" for k in range(n)]
    for k, c in enumerate(MARKUP_CAPTIONS):
        caps[k] = c
    for k in range(n - 8, n):
        caps[k] = SHARED_CAPTION
        text[k] = 2.5 * text[n - 8]
    thumbs = tmp_path / f"{name}-thumbs"
    thumbs.mkdir()
    for k in range(0, n, 2):
        Image.new("RGB", (16, 16), (10 * k, 90, 160)).save(thumbs / f"t{k}.jpg")
    images = pd.DataFrame({
        "image_id": [f"im{k}" for k in range(n)],
        "source": [f"**src**_{k}.jpg" for k in range(n)],
        "thumbnail": [f"t{k}.jpg" if k % 2 == 0 else None for k in range(n)],
        "concept_frequency": np.linspace(0.1, 1.0, n)})
    texts = pd.DataFrame({"text_id": [f"t{k}" for k in range(n)], "caption": caps,
                          "image_id": images["image_id"]})
    store.create_dataset(name, image, text, images, texts, thumbs_dir=thumbs)
    return image, text, caps


# Widget kinds AppTest can drive, in the order they are swept.
KINDS = ("multiselect", "slider", "select_slider", "number_input", "radio", "selectbox",
         "checkbox", "toggle", "text_input", "button")
# Changed last: it opens another dataset, where the controls differ.
LAST = ("dataset_select",)


def _new_value(kind: str, w):
    if kind == "multiselect":
        opts = list(w.options)
        cur = list(w.value)
        alt = [o for o in opts[::-1] if o not in cur][:1]
        return alt or []
    if kind == "slider":
        v, step = w.value, w.step
        if isinstance(v, (tuple, list)):
            a, b = v
            if a + step < b:
                return (type(a)(round(a + 5 * step, 10)) if a + 5 * step < b
                        else type(a)(round(a + step, 10)), b)
            return (a, b)
        return w.max if v != w.max else w.min
    if kind == "select_slider":
        opts = list(w.options)
        return opts[-1] if w.value != opts[-1] else opts[0]
    if kind == "number_input":
        v, step = w.value, (w.step or 1)
        hi = w.max if w.max is not None else v + step
        lo = w.min if w.min is not None else v - step
        new = v + step if v + step <= hi else v - step
        new = min(max(new, lo), hi)
        return type(v)(round(new, 10)) if isinstance(v, float) else type(v)(new)
    if kind in ("radio", "selectbox"):
        opts = [o for o in w.options if o != w.value]
        return opts[0] if opts else w.value
    if kind in ("checkbox", "toggle"):
        return not w.value
    if kind == "text_input":
        return "a red circle"
    raise AssertionError(kind)


def _find(at, kind: str, key: str):
    for w in getattr(at, kind):
        if w.key == key:
            return w
    return None


def controls(at) -> list[tuple[str, str]]:
    """(kind, key) of every keyed control on the rendered page."""
    out = []
    for kind in KINDS:
        for w in getattr(at, kind):
            if w.key and not w.key.startswith(("dl-", "csv-")) and (kind, w.key) not in out:
                out.append((kind, w.key))
    first = [c for c in out if c[1] not in LAST]
    return first + [c for c in out if c[1] in LAST]


def errors(at) -> list[str]:
    return [e.value for e in at.error]


def change_every_control(at, *, allowed_errors=(), skip=(), timings=None,
                         before_run=None) -> list[str]:
    """Change each control of the page once (one rerun per control) and check
    that no rerun raises or shows an error box (except messages containing one
    of ``allowed_errors``). Returns the (kind:key) of every control changed.

    ``timings`` (a list) receives (key, seconds) per rerun; ``before_run()`` is
    called just before each rerun (benchmarks use it).
    """
    changed = []
    for kind, key in controls(at):
        if key in skip:
            continue
        w = _find(at, kind, key)
        if w is None:                    # gone after an earlier change (e.g. a page switch)
            continue
        if kind == "button":
            w.click()
        else:
            w.set_value(_new_value(kind, w))
        if before_run is not None:
            before_run()
        t = time.perf_counter()
        at.run()
        if timings is not None:
            timings.append((key, time.perf_counter() - t))
        assert not at.exception, (key, [e.value for e in at.exception])
        bad = [e for e in errors(at) if not any(a in e for a in allowed_errors)]
        assert not bad, (key, bad)
        changed.append(f"{kind}:{key}")
    return changed


# Elements whose text Streamlit renders as markdown.
MARKDOWN_KINDS = ("markdown", "caption", "info", "warning", "error", "success", "title",
                  "header", "subheader")


def markup_leaks(at, strings) -> list[tuple[str, str]]:
    """(element kind, string) wherever a user string reached a markdown-rendering
    element unescaped (markdown, captions, alerts, metric labels, image captions)."""
    out = []
    for kind in MARKDOWN_KINDS:
        for el in at.get(kind):
            out += [(kind, s) for s in strings if s in str(el.value)]
    for m in at.metric:
        out += [("metric", s) for s in strings if s in m.label]
    for img in at.get("image"):
        out += [("image caption", s) for s in strings for c in img.captions if s in c]
    return out


def plain_texts(at) -> list[str]:
    """Everything drawn with st.text (plain text)."""
    return [t.value for t in at.get("text")]


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
