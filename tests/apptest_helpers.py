"""Reading what AppTest rendered: metrics, plotly figures and their arrays."""

import base64
import json

import numpy as np


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


# Widgets a control walk leaves alone: the dataset picker (chosen by the
# caller), the presentation switch (tested on its own) and the UMAP row count
# (its button starts long work).
WALK_SKIP_KEYS = ("dataset_select", "presentation_switch", "umap_rows")


def _change(w) -> bool:
    """Give an AppTest widget a different valid value; False to leave it alone."""
    kind = type(w).__name__
    v = w.value
    if kind in ("Toggle", "Checkbox"):
        w.set_value(not v)
    elif kind == "Selectbox":
        if len(w.options) < 2:
            return False
        w.select_index(1 if w.index == 0 else 0)
    elif kind == "Radio":
        opts = list(w.options)
        other = opts[1] if w.index == 0 else opts[0]
        if len(opts) < 2 or str(w.format_func(other)) != other:
            return False          # labels are not values: cannot invert format_func
        w.set_value(other)
    elif kind == "Slider":
        lo, hi, step = w.min, w.max, w.step or 1
        if isinstance(v, (tuple, list)):
            if v[1] - step < v[0]:
                return False
            w.set_range(v[0], v[1] - step)
        elif v + step <= hi:
            w.set_value(v + step)
        elif v - step >= lo:
            w.set_value(v - step)
        else:
            return False
    elif kind == "NumberInput":
        if w.max is not None and w.value + (w.step or 1) > w.max:
            w.decrement()
        else:
            w.increment()
    else:
        return False
    return True


def walk_controls(at, *, skip=WALK_SKIP_KEYS, limit: int = 30):
    """Change every toggle, checkbox, selectbox, radio, slider and number input
    of the page once, rerunning after each; yields (label, seconds) per change.

    Widgets are looked up again after every run (a change can add or remove
    others); each key is changed at most once.
    """
    import time

    done = set()
    for _ in range(limit):
        todo = None
        for kind in ("toggle", "checkbox", "selectbox", "radio", "slider", "number_input"):
            for w in getattr(at, kind):
                key = w.key or f"{kind}:{w.label}"
                if key in done or (w.key and w.key.startswith(skip)) or w.disabled:
                    continue
                todo = (key, w)
                break
            if todo:
                break
        if todo is None:
            return
        key, w = todo
        done.add(key)
        if not _change(w):
            continue
        t0 = time.perf_counter()
        at.run()
        yield w.label, time.perf_counter() - t0
