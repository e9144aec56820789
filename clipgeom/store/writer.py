"""Writing a dataset: check shapes and tables first, write a new version
beside the old (each array streamed in row blocks: checked, hashed and written
in one pass), switch to it atomically (see ``versions``), under the name's
writer lock (see ``locks``). A row that fails its check aborts the write and
nothing is left behind."""

from __future__ import annotations

import datetime as _dt
import json
import re
import secrets
import shutil
from pathlib import Path

import numpy as np

from .. import validate
from ..errors import DatasetError, InputError
from . import locks, versions
from .catalog import open_dataset
from .dataset import Dataset
from .files import (ArrayRows, NpyRows, fingerprint_of, fsync_dir, json_default, pair_rows,
                    save_array, sha256_file, write_manifest, write_table)
from .layout import (ARRAY_FILES, IMAGE_EMB, IMAGES, MANIFEST, SCHEMA_VERSION, TABLE_FILES,
                     TEXT_EMB, TEXTS, check_name, make_dir, read_only_map, resolve_home)
from .manifest import file_stat
from .tables import norm_model, prepare_images, prepare_texts, to_arrow

CORE_KEYS = ("schema_version", "name", "created", "model", "dim", "n_images",
             "n_texts", "n_pairs", "normalized_input", "source", "arrays",
             "fingerprint", "tables", "extra_arrays")


def create_dataset(name: str, image_emb, text_emb, images=None, texts=None, *,
                   model=None, source=None, extra_manifest=None,
                   overwrite: bool = False, home=None, thumbs_dir=None,
                   extra_arrays=None) -> Dataset:
    """Validate and write a dataset atomically; return it opened.

    ``images``/``texts`` DataFrames are optional (ids ``img00000...`` /
    ``txt00000...``; text row i paired with image row i when the counts are
    equal, otherwise unpaired). ``thumbs_dir`` is copied into ``thumbs/``;
    the images' ``thumbnail`` column holds paths relative to it.
    ``extra_arrays`` ({name: array}) are stored as ``extra/<name>.npy`` with
    their sha256 in the manifest (e.g. the demo's training snapshots) and
    opened memory-mapped by :meth:`Dataset.extra_array`.
    """
    return _create(name, image_emb, text_emb, images, texts, model=model,
                   source=source, extra_manifest=extra_manifest,
                   overwrite=overwrite, home=home, thumbs_dir=thumbs_dir,
                   extra_arrays=extra_arrays)


_EXTRA_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,99}")


def _check_extra_arrays(extra_arrays) -> dict:
    out = {}
    for k, v in (extra_arrays or {}).items():
        if not _EXTRA_NAME.fullmatch(str(k)):
            raise InputError(f"extra array name {k!r}: use letters, digits, '.', '_' or '-'.")
        arr = np.asarray(v)
        if arr.dtype == object or not np.issubdtype(arr.dtype, np.number):
            raise InputError(f"extra array {k!r} must be numeric, got {arr.dtype}.")
        out[str(k)] = np.ascontiguousarray(arr)
    return out


def _create(name, image_emb, text_emb, images, texts, *, model, source,
            extra_manifest, overwrite, home, thumbs_dir, extra_arrays=None,
            image_name="image embeddings", text_name="text embeddings") -> Dataset:
    check_name(name)
    h = resolve_home(home)
    if name in read_only_map():
        raise DatasetError(
            f"{name!r} is the name of a bundled read-only dataset; choose "
            "another name."
        )
    final = h / "datasets" / name
    _refuse_existing(final, name, overwrite, h)
    # Shapes now; the rows are checked (NaN/Inf, zero rows), hashed and written
    # in one pass per array below (files.write_float32_rows): memory is one
    # row block, whatever the arrays' length.
    img, txt = _rows_source(image_emb, image_name), _rows_source(text_emb, text_name)
    n_img, _ = validate.shape(img.shape, img.dtype, image_name, min_rows=1)
    n_txt, _ = validate.shape(txt.shape, txt.dtype, text_name, min_rows=1)
    if n_img < 2 and n_txt < 2:
        raise InputError(
            f"{image_name} and {text_name} have {n_img} and "
            f"{n_txt} rows; at least one of them needs 2 or more rows."
        )
    validate.same_width(_Shape(img.shape), _Shape(txt.shape), image_name, text_name)
    img_df = prepare_images(images, n_img)
    txt_df = prepare_texts(texts, n_txt, img_df["image_id"].tolist())
    img_tab = to_arrow(img_df, IMAGES, "images table")
    txt_tab = to_arrow(txt_df, TEXTS, "texts table")
    model = norm_model(model)
    source = dict(source) if source is not None else {"kind": "python"}
    extra = dict(extra_manifest or {})
    clash = [k for k in extra if k in CORE_KEYS]
    if clash:
        raise InputError(
            f"extra_manifest may not set {', '.join(clash)}; those are written "
            "by the store."
        )
    try:
        json.dumps({"model": model, "source": source, "extra": extra},
                   default=json_default)
    except (TypeError, ValueError) as exc:
        raise InputError(f"model/source/extra_manifest must be JSON-like ({exc}).") from None
    if thumbs_dir is not None and not Path(thumbs_dir).is_dir():
        raise InputError(f"{thumbs_dir}: thumbnails folder not found.")
    n_pairs = int(len(pair_rows(img_df["image_id"], txt_df["image_id"])[0]))
    extras = _check_extra_arrays(extra_arrays)

    root = make_dir(h / "datasets")
    with locks.writer_lock(h, name, f"writing dataset {name}"):
        versions.sweep(h)
        _refuse_existing(final, name, overwrite, h)      # again, now that we hold the name
        tmp = root / f"{versions.TMP_PREFIX}{name}-{secrets.token_hex(6)}"
        try:
            tmp.mkdir()
            for sub in ("thumbs", "index", "cache"):
                (tmp / sub).mkdir()
            if thumbs_dir is not None:
                shutil.copytree(thumbs_dir, tmp / "thumbs", dirs_exist_ok=True)
                for i, t in enumerate(img_df["thumbnail"].tolist()):
                    if t is not None and not (tmp / "thumbs" / t).is_file():
                        raise InputError(
                            f"images table row {i} (0-based): thumbnail {t!r} is "
                            f"not in the thumbnails folder {thumbs_dir}."
                        )
            written = {}
            for fname, src, what in ((IMAGE_EMB, img, image_name), (TEXT_EMB, txt, text_name)):
                written[fname] = save_array(tmp / fname, src)      # streamed
                written[fname].check.raise_for(src, what, allow_zero=False)
            write_table(img_tab, tmp / IMAGES)
            write_table(txt_tab, tmp / TEXTS)
            extra_meta = {}
            if extras:
                (tmp / "extra").mkdir()
                for k, arr in extras.items():
                    save_array(tmp / "extra" / f"{k}.npy", arr)
                    extra_meta[k] = {"sha256": sha256_file(tmp / "extra" / f"{k}.npy"),
                                     "shape": list(arr.shape), "dtype": str(arr.dtype)}
            hashes = {f: written[f].sha256 if f in written else sha256_file(tmp / f)
                      for f in ARRAY_FILES + TABLE_FILES}
            manifest = {
                "schema_version": SCHEMA_VERSION,
                "name": name,
                "created": _dt.datetime.now(_dt.timezone.utc)
                              .isoformat(timespec="seconds").replace("+00:00", "Z"),
                "model": model,
                "dim": int(img.shape[1]),
                "n_images": n_img,
                "n_texts": n_txt,
                "n_pairs": n_pairs,
                "normalized_input": {"image": written[IMAGE_EMB].normalized,
                                     "text": written[TEXT_EMB].normalized},
                "source": source,
                # stat: size, mtime and inode, checked on every open (a rename
                # into the version folder keeps all three).
                "arrays": {
                    IMAGE_EMB: {"sha256": hashes[IMAGE_EMB], "shape": [n_img, int(img.shape[1])],
                                "dtype": "float32", "stat": file_stat(tmp / IMAGE_EMB)},
                    TEXT_EMB: {"sha256": hashes[TEXT_EMB], "shape": [n_txt, int(txt.shape[1])],
                               "dtype": "float32", "stat": file_stat(tmp / TEXT_EMB)},
                },
                "tables": {IMAGES: {"sha256": hashes[IMAGES], "stat": file_stat(tmp / IMAGES)},
                           TEXTS: {"sha256": hashes[TEXTS], "stat": file_stat(tmp / TEXTS)}},
                "fingerprint": fingerprint_of(hashes),
                "skipped": [],
                "extra_arrays": extra_meta,
            }
            manifest.update(extra)
            write_manifest(tmp / MANIFEST, manifest)
            fsync_dir(tmp)
            versions.publish(tmp, final)
        except BaseException as exc:
            shutil.rmtree(tmp, ignore_errors=True)
            if isinstance(exc, OSError):
                raise DatasetError(
                    f"Writing dataset {name!r} under {root} failed "
                    f"({exc.strerror or exc}); nothing was changed. Check free "
                    "space and permissions."
                ) from exc
            raise
        return open_dataset(name, home=h)


def _rows_source(x, name: str):
    """An array argument as a row-block source (a ``.npy`` being imported
    stays a file reader; anything else becomes an array)."""
    if isinstance(x, NpyRows):
        return x
    try:
        arr = np.asarray(x)
    except Exception as exc:  # pragma: no cover - exotic objects
        raise InputError(f"{name}: cannot be read as an array ({exc}).") from None
    return ArrayRows(arr)


class _Shape:
    """Just a shape, for validate.same_width."""

    def __init__(self, shape):
        self.shape = shape


def _refuse_existing(final: Path, name: str, overwrite: bool, h: Path) -> None:
    if not overwrite and final.is_dir() and versions.current_folder_or_none(final) is not None:
        raise DatasetError(
            f"Dataset {name!r} already exists in {h / 'datasets'}; pass "
            "overwrite=True / --overwrite or choose another name."
        )
