"""Nearest-neighbour queries over a dataset: by text, by image file, by item.

Queries are embedded raw with the dataset's own model, then searched in the
FAISS index of the target modality (cosine on L2-normalised vectors).
"""

from __future__ import annotations

from functools import lru_cache
from typing import Optional

import numpy as np

from . import embed, index
from .errors import InputError


@lru_cache(maxsize=2)
def _model(spec: embed.ModelSpec, device: Optional[str]):
    return embed.load_model(spec, device)


def embed_query(ds, *, text: Optional[str] = None, image=None,
                device: Optional[str] = None) -> np.ndarray:
    """A raw query vector [d] from free text or an image file, with the dataset's model."""
    spec = embed.spec_from_manifest(ds.manifest.get("model"), ds.name)
    lm = _model(spec, device)
    if text is not None:
        if not text.strip():
            raise InputError("the text query is empty.")
        vec = embed.encode_texts(lm, [text])[0]
    else:
        vec = embed.encode_image_files(lm, [image])[0]
    if vec.shape[0] != ds.dim:
        raise InputError(f"the model gives {vec.shape[0]}-dimensional vectors but dataset "
                         f"{ds.name!r} has {ds.dim}.")
    return vec


def _label(ds, modality: str, row: int) -> tuple[str, str]:
    if modality == "image":
        r = ds.images.iloc[row]
        return str(r["image_id"]), str(r.get("source", ""))
    r = ds.texts.iloc[row]
    return str(r["text_id"]), str(r.get("caption", ""))


def run_query(ds, *, text=None, image=None, item=None, item_modality="image",
              target=None, k: int = 10, device=None) -> dict:
    """Search ``ds``; returns a JSON-ready dict (query, target, results with ids/labels)."""
    if k < 1:
        raise InputError(f"k must be at least 1, got {k}.")
    if item is not None:
        target = target or item_modality
        n = ds.n_images if item_modality == "image" else ds.n_texts
        if not 0 <= item < n:
            raise InputError(f"item {item} is out of range: the dataset has {n} "
                             f"{item_modality} rows (0 to {n - 1}).")
        res = index.search_item(ds, item_modality, item, target, k=k)
        query = f"{item_modality} item {item} ({_label(ds, item_modality, item)[1]})"
    else:
        target = target or ("image" if text is not None else "text")
        vec = embed_query(ds, text=text, image=image, device=device)
        res = index.search(ds, target, vec, k=k)
        query = f"text {text!r}" if text is not None else f"image {image}"
    info = index.load_index(ds, target)[1]
    results = []
    for rank, (score, row) in enumerate(zip(res.scores[0], res.rows[0]), start=1):
        if row < 0:
            continue
        ident, label = _label(ds, target, int(row))
        results.append({"rank": rank, "score": float(score), "row": int(row), "id": ident,
                        "label": label})
    return {"query": query, "target": target, "k": k, "index_kind": info.kind,
            "results": results}
