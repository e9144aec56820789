"""Importing user arrays (``.npy`` files, never unpickled) with their
captions, image list and labels into a dataset."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pandas as pd

from .. import validate
from ..captions import read_captions, read_image_list, read_labels
from ..errors import InputError
from .dataset import Dataset
from .files import HEADER_ERRORS, NpyRows
from .layout import check_name, resolve_home
from .writer import _create


def _load_user_npy(path, what: str) -> NpyRows:
    """The user's ``.npy`` file, header read and checked; its rows are read
    later, block by block, while they are copied into the store."""
    p = Path(path)
    if not p.exists():
        raise InputError(f"{p}: {what} file not found.")
    if p.is_dir():
        raise InputError(f"{p}: is a folder; expected a .npy file of {what}.")
    if p.suffix.lower() != ".npy":
        raise InputError(
            f"{p}: {what} must be a .npy file (saved with np.save); got "
            f"{p.suffix or 'no extension'!r}."
        )
    try:
        rows = NpyRows(p)
    except HEADER_ERRORS as exc:           # numpy parses the header as Python
        raise InputError(
            f"{p}: not a valid .npy file ({exc}); save the {what} with np.save."
        ) from None
    if rows.dtype.hasobject:
        raise InputError(
            f"{p}: contains pickled objects; clipgeom never unpickles user "
            "files; save a plain float array with np.save."
        )
    return rows


def _resolve_images(caps: pd.DataFrame, sources, n_img: int, image_ids,
                    cap_path, list_path) -> list:
    lines = caps.attrs.get("lines") or list(range(1, len(caps) + 1))
    by_source: dict[str, int] = {}
    dup: set[str] = set()
    if sources is not None:
        for i, s in enumerate(sources):
            if s in by_source:
                dup.add(s)
            else:
                by_source[s] = i
    out = []
    for k, v in enumerate(caps["image"].tolist()):
        if v is None or (isinstance(v, float) and np.isnan(v)):
            out.append(None)
            continue
        where = f"{cap_path}, line {lines[k]} (text row {k})"
        row = None
        if isinstance(v, str):
            s = v.strip()
            if s in by_source:
                if s in dup:
                    raise InputError(
                        f"{where}: image {s!r} appears more than once in the "
                        f"image list {list_path}; refer to it by image row number."
                    )
                row = by_source[s]
            elif re.fullmatch(r"[0-9]+", s):
                row = int(s)
            else:
                hint = (f"a source in the image list {list_path}"
                        if sources is not None else
                        "an image row number (no image list was given)")
                raise InputError(
                    f"{where}: image {v!r} is not {hint} nor a 0-based image "
                    f"row 0..{n_img - 1}."
                )
        else:
            row = int(v)
        if not 0 <= row < n_img:
            raise InputError(
                f"{where}: image row {row} is out of range; there are {n_img} "
                f"images (rows 0..{n_img - 1}, 0-based)."
            )
        out.append(image_ids[row])
    return out


def import_arrays(name: str, image_emb, text_emb, *, captions=None,
                  image_list=None, labels=None, overwrite: bool = False,
                  home=None) -> Dataset:
    """Import precomputed embeddings from two ``.npy`` files.

    Text row i is paired with image row i (when the counts match) unless the
    captions file has an ``image`` column. ``captions``: .txt/.csv/.tsv/.jsonl
    (see :mod:`clipgeom.captions`); ``image_list``: one image path per line;
    ``labels``: one label per image row (text file, or csv with ``label``).
    """
    check_name(name)
    h = resolve_home(home)
    img_path, txt_path = Path(image_emb), Path(text_emb)
    img = _load_user_npy(img_path, "image embeddings")
    txt = _load_user_npy(txt_path, "text embeddings")
    img_name = f"image embeddings ({img_path})"
    txt_name = f"text embeddings ({txt_path})"
    # Shapes and dtypes from the headers now; the rows are checked (NaN/Inf,
    # zero rows), hashed and copied in one pass while the dataset is written.
    n_img, _ = validate.shape(img.shape, img.dtype, img_name, min_rows=1)
    n_txt, _ = validate.shape(txt.shape, txt.dtype, txt_name, min_rows=1)

    image_ids = [f"img{i:05d}" for i in range(n_img)]
    images = pd.DataFrame({"image_id": image_ids})
    sources = None
    if image_list is not None:
        sources = read_image_list(image_list)
        if len(sources) != n_img:
            raise InputError(
                f"{image_list}: has {len(sources)} image lines but {img_name} "
                f"has {n_img} rows; they must match line for row."
            )
        images["source"] = sources
    if labels is not None:
        labs = read_labels(labels)
        if len(labs) != n_img:
            raise InputError(
                f"{labels}: has {len(labs)} labels but {img_name} has {n_img} "
                "rows; give one label per image row."
            )
        images["label"] = pd.Series(labs, dtype=object)

    texts = pd.DataFrame({"text_id": [f"txt{i:05d}" for i in range(n_txt)]})
    if captions is not None:
        caps = read_captions(captions)
        if len(caps) != n_txt:
            raise InputError(
                f"{captions}: has {len(caps)} captions but {txt_name} has "
                f"{n_txt} rows; give exactly one caption per text row."
            )
        texts["caption"] = caps["caption"].to_numpy()
        if "image" in caps.columns:
            texts["image_id"] = pd.Series(
                _resolve_images(caps, sources, n_img, image_ids, captions,
                                image_list), dtype=object)
        for col in caps.columns:
            if col not in ("caption", "image"):
                texts[col] = caps[col].to_numpy()

    source = {"kind": "arrays", "image_emb": str(img_path),
              "text_emb": str(txt_path),
              "captions": None if captions is None else str(captions),
              "image_list": None if image_list is None else str(image_list),
              "labels": None if labels is None else str(labels)}
    return _create(name, img, txt, images, texts, model=None, source=source,
                   extra_manifest=None, overwrite=overwrite, home=h,
                   thumbs_dir=None, image_name=img_name, text_name=txt_name)
