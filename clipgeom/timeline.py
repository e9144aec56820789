"""Training snapshots: the geometry of a model's raw embeddings as it trains.

A dataset may carry raw embeddings of one fixed set of held-out pairs at
several training steps (the bundled demo does: ``snapshot_steps`` plus
``snapshot_image_<step>`` / ``snapshot_text_<step>`` extra arrays, step 0 being
the random initialisation). This module reads them and measures each step
with the same functions the report uses, so the dashboard can show the
double ellipsoid forming: the modalities separating (Double-Ellipsoid Eq. 5),
the shells thinning (Eq. 3-4), the means moving off the origin (||m||/||sigma||)
and conformity following its estimate (Def. 1-2).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from . import conformity, geometry
from .errors import DatasetError

STEPS_ARRAY = "snapshot_steps"


@dataclass(frozen=True, eq=False)
class Snapshot:
    """Raw embeddings of the held-out pairs at one training step (row i of each
    modality is pair i)."""

    step: int
    image: np.ndarray
    text: np.ndarray


def has_snapshots(ds) -> bool:
    return STEPS_ARRAY in ds.extra_array_names


def snapshot_steps(ds) -> list[int]:
    """The recorded steps, ascending; [] when the dataset records none."""
    if not has_snapshots(ds):
        return []
    return sorted(int(s) for s in np.asarray(ds.extra_array(STEPS_ARRAY)).ravel())


def snapshot_captions(ds) -> list[str] | None:
    """The caption of each snapshot pair, where the dataset records them
    (the demo does, in its manifest); None otherwise."""
    caps = (ds.manifest.get("demo") or {}).get("snapshot_captions")
    return [str(c) for c in caps] if isinstance(caps, list) else None


def load_snapshot(ds, step: int) -> Snapshot:
    """One step's embeddings; DatasetError names what is missing or malformed."""
    steps = snapshot_steps(ds)
    if int(step) not in steps:
        raise DatasetError(f"dataset {ds.name!r} has no training snapshot at step {step} "
                           f"(it has: {', '.join(map(str, steps)) or 'none'}).")
    img = np.asarray(ds.extra_array(f"snapshot_image_{int(step)}"), dtype=np.float32)
    txt = np.asarray(ds.extra_array(f"snapshot_text_{int(step)}"), dtype=np.float32)
    if img.ndim != 2 or img.shape != txt.shape:
        raise DatasetError(f"dataset {ds.name!r}: the step-{step} snapshot arrays have "
                           f"shapes {img.shape} and {txt.shape}; they must be equal [N, d].")
    return Snapshot(step=int(step), image=img, text=txt)


def retrieval_accuracy(image: np.ndarray, text: np.ndarray) -> dict:
    """Top-1 paired retrieval on cosine similarity, both directions (row i <-> row i)."""
    u = image / np.linalg.norm(image, axis=1, keepdims=True)
    t = text / np.linalg.norm(text, axis=1, keepdims=True)
    sim = u @ t.T
    idx = np.arange(len(u))
    return {"i2t": float(np.mean(sim.argmax(1) == idx)),
            "t2i": float(np.mean(sim.argmax(0) == idx))}


def step_measures(snap: Snapshot) -> dict:
    """The headline geometry of one step (one row of :func:`timeline_table`)."""
    si = geometry.summarize(snap.image, "image")
    st = geometry.summarize(snap.text, "text")
    sep = geometry.separability(si, st)
    ci = conformity.fit_conformity(snap.image)
    ct = conformity.fit_conformity(snap.text)
    acc = retrieval_accuracy(snap.image, snap.text)
    row = {"step": snap.step,
           "separable features (Sep > 1)": int(np.sum(sep > 1)),
           "max Sep": float(np.max(sep)),
           "cos(m_image, m_text)": geometry.mean_cosine(si, st),
           "paired retrieval i2t": acc["i2t"], "paired retrieval t2i": acc["t2i"]}
    for mod, s, c in (("image", si, ci), ("text", st, ct)):
        shell = geometry.thin_shell(s)
        row[f"{mod} mean norm"] = float(np.mean(s.norms))
        row[f"{mod} shell std / radius"] = float(shell.shell_std / shell.mean_norm) \
            if shell.mean_norm > 0 else float("nan")
        row[f"{mod} ||m||/||sigma||"] = geometry.mean_over_sigma(s)
        row[f"{mod} conformity Pearson"] = c.pearson
    return row


def timeline_table(snapshots: list[Snapshot]) -> pd.DataFrame:
    """:func:`step_measures` for every snapshot, one row per step, ascending."""
    return pd.DataFrame([step_measures(s) for s in sorted(snapshots, key=lambda s: s.step)])
