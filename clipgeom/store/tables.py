"""The images and texts tables of a dataset: ids, pairing, thumbnails, and
their conversion to Arrow, with errors that name the row."""

from __future__ import annotations

from pathlib import PurePosixPath, PureWindowsPath

import numpy as np
import pandas as pd
import pyarrow as pa

from ..errors import InputError
from .layout import IMAGES, TEXTS

STRING_COLS = {
    IMAGES: ("image_id", "source", "thumbnail"),
    TEXTS: ("text_id", "caption", "image_id"),
}


def _ids(series: pd.Series, what: str, first_col: str) -> list[str]:
    vals = []
    for i, v in enumerate(series.tolist()):
        if v is None or (isinstance(v, float) and np.isnan(v)) or \
                (not isinstance(v, str) and pd.isna(v)):
            raise InputError(f"{what}: {first_col} is empty in row {i} (0-based).")
        if isinstance(v, (float, np.floating)) and float(v).is_integer():
            v = int(v)
        vals.append(str(v))
    seen: dict[str, int] = {}
    for i, v in enumerate(vals):
        if v in seen:
            raise InputError(
                f"{what}: duplicate {first_col} {v!r} in rows {seen[v]} and {i} "
                f"(0-based); every {first_col} must be unique."
            )
        seen[v] = i
    return vals


def _opt_str(v):
    if v is None:
        return None
    if not isinstance(v, str):
        try:
            if pd.isna(v):
                return None
        except (TypeError, ValueError):
            pass
        if isinstance(v, (float, np.floating)) and float(v).is_integer():
            v = int(v)
    return str(v)


def _check_thumb(v: str, row: int) -> None:
    pp, pw = PurePosixPath(v), PureWindowsPath(v)
    if pp.is_absolute() or pw.is_absolute() or pw.drive or ".." in pp.parts \
            or ".." in pw.parts:
        raise InputError(
            f"images table: thumbnail {v!r} in row {row} (0-based) must be a "
            "path relative to the thumbnails folder, without '..'."
        )


def prepare_images(images, n: int) -> pd.DataFrame:
    if images is None:
        df = pd.DataFrame(index=range(n))
    else:
        if not isinstance(images, pd.DataFrame):
            raise InputError("images must be a pandas DataFrame or None.")
        if len(images) != n:
            raise InputError(
                f"images table has {len(images)} rows but image embeddings "
                f"have {n} rows; they must match row for row."
            )
        df = images.reset_index(drop=True).copy()
    if "image_id" in df.columns:
        ids = _ids(df["image_id"], "images table", "image_id")
    else:
        ids = [f"img{i:05d}" for i in range(n)]
    src = ([_opt_str(v) or "" for v in df["source"].tolist()]
           if "source" in df.columns else [""] * n)
    thumbs = ([_opt_str(v) for v in df["thumbnail"].tolist()]
              if "thumbnail" in df.columns else [None] * n)
    for i, t in enumerate(thumbs):
        if t is not None:
            _check_thumb(t, i)
    out = pd.DataFrame({"image_id": pd.Series(ids, dtype=object),
                        "source": pd.Series(src, dtype=object),
                        "thumbnail": pd.Series(thumbs, dtype=object)})
    for col in df.columns:
        if col not in out.columns:
            out[col] = df[col].to_numpy()
    return out


def prepare_texts(texts, n: int, image_ids: list[str]) -> pd.DataFrame:
    n_img = len(image_ids)
    if texts is None:
        df = pd.DataFrame(index=range(n))
    else:
        if not isinstance(texts, pd.DataFrame):
            raise InputError("texts must be a pandas DataFrame or None.")
        if len(texts) != n:
            raise InputError(
                f"texts table has {len(texts)} rows but text embeddings have "
                f"{n} rows; they must match row for row."
            )
        df = texts.reset_index(drop=True).copy()
    if "text_id" in df.columns:
        ids = _ids(df["text_id"], "texts table", "text_id")
    else:
        ids = [f"txt{i:05d}" for i in range(n)]
    caps = ([_opt_str(v) or "" for v in df["caption"].tolist()]
            if "caption" in df.columns else [""] * n)
    if "image_id" in df.columns:
        pairing = [_opt_str(v) for v in df["image_id"].tolist()]
        known = set(image_ids)
        for i, v in enumerate(pairing):
            if v is not None and v not in known:
                raise InputError(
                    f"texts table row {i} (0-based): image_id {v!r} is not an "
                    "image_id in the images table. Fix the pairing or leave it "
                    "empty for an unpaired caption."
                )
    elif n == n_img:
        pairing = list(image_ids)
    else:
        pairing = [None] * n
    out = pd.DataFrame({"text_id": pd.Series(ids, dtype=object),
                        "caption": pd.Series(caps, dtype=object),
                        "image_id": pd.Series(pairing, dtype=object)})
    for col in df.columns:
        if col not in out.columns:
            out[col] = df[col].to_numpy()
    return out


def to_arrow(df: pd.DataFrame, fname: str, what: str) -> pa.Table:
    cols, names = [], []
    for col in df.columns:
        if not isinstance(col, str):
            raise InputError(f"{what}: column names must be strings, got {col!r}.")
        values = df[col]
        try:
            if col in STRING_COLS[fname]:
                arr = pa.array(values.tolist(), type=pa.string())
            else:
                arr = pa.Array.from_pandas(values)
                if pa.types.is_null(arr.type):
                    arr = arr.cast(pa.string())
        except (pa.ArrowInvalid, pa.ArrowTypeError, pa.ArrowNotImplementedError) as exc:
            raise InputError(
                f"{what}: column {col!r} cannot be stored ({exc}); make all its "
                "values one type (for example all strings)."
            ) from None
        cols.append(arr)
        names.append(col)
    return pa.Table.from_arrays(cols, names=names)


def norm_model(model):
    if model is None:
        return None
    if isinstance(model, str):
        return {"name": model}
    if isinstance(model, dict):
        return dict(model)
    raise InputError("model must be a dict (e.g. {'name': ..., 'pretrained': ...}), "
                     "a string or None.")

