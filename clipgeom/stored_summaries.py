"""Each modality's summary, kept beside the stored report.

A :class:`clipgeom.geometry.ModalitySummary` (mean, std, covariance, and the
raw and centred norm of every row: Double-Ellipsoid Eq. 1-6) is what
:func:`clipgeom.geometry.summarize` computes in two float64 passes over every
row, about 15 s of CPU per modality at 1,000,000 x 512. The report's first
two passes compute the very same numbers (the same mergeable moments, block
by block), so :func:`clipgeom.report.stored_report` keeps them here and pages
(Thin shell) read them in milliseconds. One file per dataset version (its
fingerprint, any τ or pair count), written by whichever report or page
summarises the dataset first.

File: ``<dataset>/cache/summaries-<key>.npz`` (float64 arrays, no pickles).
"""

from __future__ import annotations

import hashlib
import json
import zipfile
from pathlib import Path
from typing import Optional

import numpy as np

from ._atomic import replacing
from .errors import DatasetError
from .geometry import ModalitySummary

FIELDS = ("mean", "std", "cov", "norms", "centered_norms")
MODALITIES = ("image", "text")
#: Per-row values of the report's pass 2 kept as well: exact conformity
#: (Def. 1, float64) and cos(m, v) (Def. 2), which the Conformity page draws.
ROW_VALUES = ("conformity", "cos_mean")


def path(ds) -> Path:
    """Where the summaries of this dataset version are kept."""
    from . import __version__        # a new release recomputes: its maths may differ

    key = json.dumps({"kind": "summaries", "version": __version__,
                      "fingerprint": ds.fingerprint}, sort_keys=True)
    return ds.cache_dir / f"summaries-{hashlib.sha256(key.encode()).hexdigest()[:20]}.npz"


def save(ds, image: ModalitySummary, text: ModalitySummary,
         rows: Optional[dict] = None) -> bool:
    """Keep both summaries (atomic replace), and ``rows`` ({modality: {name in
    ROW_VALUES: per-row array}}) when given. False when the home cannot be
    written (read-only, full): the caller still has them, just not kept."""
    arrays = {f"{m}.{f}": np.asarray(getattr(s, f), dtype=np.float64)
              for m, s in zip(MODALITIES, (image, text)) for f in FIELDS}
    for m, values in (rows or {}).items():
        for name in ROW_VALUES:
            arrays[f"{m}.row.{name}"] = np.asarray(values[name], dtype=np.float64)
    try:
        with replacing(path(ds)) as tmp:
            with open(tmp, "wb") as fh:
                np.savez(fh, **arrays)
    except (OSError, DatasetError):
        return False
    return True


def _arrays(ds) -> Optional[dict]:
    try:
        p = path(ds)
        if not p.is_file():
            return None
        with np.load(p, allow_pickle=False) as z:
            return {k: z[k] for k in z.files}
    except (OSError, ValueError, EOFError, zipfile.BadZipFile, DatasetError):
        return None                   # (a damaged file: recomputed and replaced)


def load_rows(ds) -> Optional[dict]:
    """{modality: {name: per-row float64 array}} of :data:`ROW_VALUES`, or None
    when they are not kept (a page kept the summaries) or do not fit."""
    arrays = _arrays(ds)
    if arrays is None:
        return None
    out = {}
    for m, x in zip(MODALITIES, (ds.image_emb, ds.text_emb)):
        values = {name: arrays.get(f"{m}.row.{name}") for name in ROW_VALUES}
        if any(v is None or v.shape != (x.shape[0],) for v in values.values()):
            return None
        out[m] = values
    return out


def load(ds) -> Optional[tuple[ModalitySummary, ModalitySummary]]:
    """(image, text) summaries of this dataset version, or None when none is
    kept, or the file is damaged or does not fit the dataset's arrays."""
    arrays = _arrays(ds)
    if arrays is None:
        return None
    out = []
    for m, x in zip(MODALITIES, (ds.image_emb, ds.text_emb)):
        try:
            s = ModalitySummary(**{f: arrays[f"{m}.{f}"] for f in FIELDS})
        except KeyError:
            return None
        n, d = x.shape
        if (s.mean.shape != (d,) or s.std.shape != (d,) or s.cov.shape != (d, d)
                or s.norms.shape != (n,) or s.centered_norms.shape != (n,)):
            return None
        out.append(s)
    return out[0], out[1]
