"""A tiny 20-pair stored dataset for page tests of Search, Upload and Timeline
(small enough that every default must adapt: k, bins, rows), with markup in
its user strings so tests can check they are shown literally."""

import numpy as np
import pandas as pd
from PIL import Image

from clipgeom import store

MARKUP = "**bold** [x](http://e.com) $x^2$"
N = 20
D = 16


def make_tiny20(name: str = "tiny20", *, snapshots: bool = True, thumbs_dir=None,
                seed: int = 7):
    """20 images + 20 captions (pair i <-> i), two offset shells in 16-d; caption 0
    and image id 3 carry markdown; training snapshots at steps 0 and 10."""
    rng = np.random.default_rng(seed)
    off = np.zeros(D)
    off[:2] = [4.0, -3.0]
    base = rng.standard_normal((N, D))
    img = (base + off).astype(np.float32)
    txt = (base - off + 0.3 * rng.standard_normal((N, D))).astype(np.float32)
    ids = [f"i{k}" for k in range(N)]
    ids[3] = "**img3** [y](http://e.com)"
    images = pd.DataFrame({"image_id": ids})
    if thumbs_dir is not None:
        thumbs_dir.mkdir(parents=True, exist_ok=True)
        names = []
        for k in range(N):
            Image.new("RGB", (16, 16), (12 * k, 100, 200 - 8 * k)).save(
                thumbs_dir / f"t{k}.jpg")
            names.append(f"t{k}.jpg")
        images["thumbnail"] = names
    caps = [f"caption {k}" for k in range(N)]
    caps[0] = MARKUP
    texts = pd.DataFrame({"text_id": [f"t{k}" for k in range(N)], "caption": caps,
                          "image_id": ids})
    extras = None
    manifest = None
    if snapshots:
        extras = {"snapshot_steps": np.array([0, 10])}
        for s, scale in ((0, 0.0), (10, 1.0)):
            extras[f"snapshot_image_{s}"] = (base + scale * off + 0.1).astype(np.float32)
            extras[f"snapshot_text_{s}"] = (base - scale * off + 0.1
                                            + 0.2 * rng.standard_normal((N, D))
                                            ).astype(np.float32)
        manifest = {"demo": {"snapshot_captions": caps}}
    return store.create_dataset(name, img, txt, images, texts, extra_arrays=extras,
                                extra_manifest=manifest, thumbs_dir=thumbs_dir)


# Pieces of the markup above that render (bold, a link, LaTeX) when unescaped.
_MARKUP_PIECES = ("**bold**", "[x](http", "$x^2$", "**img3**", "[y](http")


def no_markup_rendered(at) -> list[str]:
    """The markdown-rendering elements (markdown, caption, info, warning, success,
    error, subheader, title) whose source holds a piece of the test markup
    unescaped: it would render as bold text / a link / LaTeX. [] when none does."""
    bad = []
    for kind in ("markdown", "caption", "info", "warning", "success", "error",
                 "subheader", "title", "header"):
        for el in at.get(kind):
            value = str(getattr(el, "value", ""))
            if any(part in value for part in _MARKUP_PIECES):
                bad.append(f"{kind}: {value[:120]}")
    return bad


def shown_as_text(at, raw: str = MARKUP) -> bool:
    """True when ``raw`` appears verbatim in a plain-text element (st.text) or a
    dataframe cell."""
    if any(raw in str(t.value) for t in at.text):
        return True
    for df in at.dataframe:
        v = df.value
        if any(raw in str(c) for col in v.columns if v[col].dtype == object
               for c in v[col]):
            return True
    return False


def widget_errors(at) -> list[str]:
    return [e.value for e in at.error] + [str(e.value) for e in at.exception]


_KINDS = ("slider", "select_slider", "radio", "selectbox", "checkbox", "toggle",
          "number_input", "text_input")


def _other_value(w, texts):
    kind = w.type
    v = w.value
    if kind == "slider":
        if isinstance(v, (tuple, list)):
            return None
        return w.max if v != w.max else w.min
    if kind == "select_slider":
        opts = list(w.options)
        cur = w.format_func(v) if callable(getattr(w, "format_func", None)) else str(v)
        pick = opts[0] if cur != opts[0] else opts[-1]
        return type(v)(pick) if isinstance(v, (int, float)) else pick
    if kind in ("radio", "selectbox"):
        opts = list(w.options)
        others = [o for o in opts if o != str(v)]
        return others[-1] if others else None
    if kind in ("checkbox", "toggle"):
        return not v
    if kind == "number_input":
        hi = w.max if w.max is not None else v + 1
        step = w.step or 1
        return v + step if v + step <= hi else v - step
    if kind == "text_input":
        return texts.get(w.key, "a red circle")
    return None


def change_every_control(at, *, skip=("dataset_select",), texts=None, check=None
                         ) -> list[str]:
    """Render, then change every keyed control once (including controls that a
    change reveals), rerunning after each: no exception and no error element
    after any of them. Returns the keys changed, in order. The dataset picker
    is left alone by default (changing it is a test of its own)."""
    texts = texts or {}
    done: list[str] = []
    assert not widget_errors(at), widget_errors(at)
    while True:
        todo = [w for kind in _KINDS for w in at.get(kind)
                if w.key and w.key not in done and w.key not in skip
                and not getattr(w, "disabled", False)]
        if not todo:
            return done
        w = todo[0]
        done.append(w.key)
        new = _other_value(w, texts)
        if new is None:
            continue
        if w.type == "selectbox":
            w.select(new)
        else:
            w.set_value(new)
        at.run()
        errs = widget_errors(at)
        assert not errs, f"after setting {w.key!r} to {new!r}: {errs}"
        if check is not None:
            check(at)
