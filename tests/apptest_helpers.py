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
