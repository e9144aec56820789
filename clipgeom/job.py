"""The embedding job: an ItemList in, a complete dataset out, resumable.

Work is split into chunks of rows. Each finished chunk is written atomically
to ``<CLIPGEOM_HOME>/jobs/<name>/`` (embeddings, which rows failed and why);
``resume=True`` skips the chunks already there, so a killed job continues
where it stopped and gives the same arrays as an uninterrupted run. Only when
every chunk is done is the dataset created (atomically, by the store) and the
job folder removed: a half job never shows up as a dataset.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset as TorchDataset

from ._atomic import replacing
from . import embed, store
from .errors import InputError
from .images import ImageLimits, make_thumbnail, open_image
from .ingest import ItemList

JOB_FORMAT = 1
Progress = Optional[Callable[[str, int, int], None]]   # (stage, done, total)


@dataclass(frozen=True)
class JobOptions:
    device: Optional[str] = None
    batch_size: Optional[int] = None
    workers: Optional[int] = None
    chunk_rows: int = 1024
    strict: bool = False
    resume: bool = False
    overwrite: bool = False
    build_index: bool = True
    limits: ImageLimits = ImageLimits()


class _ImageRows(TorchDataset):
    """Decodes, thumbnails and preprocesses image rows; failures come back as reasons."""

    def __init__(self, paths, rows, preprocess, thumbs_dir: Path, limits: ImageLimits):
        self.paths, self.rows = paths, rows
        self.preprocess, self.thumbs_dir, self.limits = preprocess, thumbs_dir, limits

    def __len__(self):
        return len(self.rows)

    def __getitem__(self, i):
        row = int(self.rows[i])
        pixels, err = decode_image(self.paths[row], self.preprocess, self.limits,
                                   self.thumbs_dir / f"{row:08d}.jpg")
        return pixels, row, err


def decode_image(path, preprocess, limits: ImageLimits, thumb_path: Path, opener=open_image):
    """Decode, thumbnail and preprocess one image: ``(pixels, None)``, or
    ``(None, reason)`` when it cannot be used (the reason names ``path``).

    ``opener(path, limits)`` returns the RGB image (:func:`open_image`; the
    WebDataset reader passes one that decodes a tar member's bytes). Shared by
    the local job's DataLoader workers and the Ray engine's decoding tasks.
    """
    try:
        img = opener(path, limits)
        make_thumbnail(img, thumb_path)
        return preprocess(img), None
    except InputError as exc:
        return None, str(exc)
    except Exception as exc:  # a decoder bug must not kill a long job
        return None, f"{path}: could not be decoded ({exc})"


def _collate(batch):
    ok = [(t, r) for t, r, err in batch if err is None]
    failed = [(r, err) for _, r, err in batch if err is not None]
    pixels = torch.stack([t for t, _ in ok]) if ok else None
    return pixels, [r for _, r in ok], failed


def _job_key(items: ItemList, spec: embed.ModelSpec, opts: JobOptions) -> str:
    """What a resumed job must share with the original: items, model, chunking."""
    h = hashlib.sha256()
    h.update(json.dumps(spec.to_manifest(), sort_keys=True).encode())
    h.update(str(opts.chunk_rows).encode())
    h.update(items.images[["image_id", "path"]].to_csv(index=False).encode())
    h.update(items.texts[["text_id", "caption"]].to_csv(index=False).encode())
    return h.hexdigest()


def _save_npz_atomic(path: Path, **arrays) -> None:
    with replacing(path) as tmp, open(tmp, "wb") as f:
        np.savez(f, **arrays)


def run(name: str, items: ItemList, spec: embed.ModelSpec, opts: JobOptions = JobOptions(),
        progress: Progress = None, home=None) -> "store.Dataset":
    """Embed every image and caption of ``items`` with ``spec`` into dataset ``name``.

    The job holds the name's writer lock from its first chunk to the commit,
    so a second writer of the name (another embed, an upload, an import, a
    delete) waits or is refused, and ``jobs/<name>/`` belongs to this job only.
    """
    store.check_name(name)
    h = store.home() if home is None else Path(home)
    with store.writer_lock(name, f"embedding job for {name!r}", home=h):
        return _run_locked(name, items, spec, opts, progress, h)


def _chunk_ok(path: Path, keys: tuple[str, ...]) -> bool:
    """True when a finished chunk file reads back whole (a resume recomputes it otherwise)."""
    try:
        with np.load(path, allow_pickle=False) as z:
            return all(z[k] is not None for k in keys)
    except Exception:                   # BadZipFile, truncated, missing member, ...
        return False


def check_resumable(jobdir: Path, key: str) -> None:
    """Refuse to resume a job folder started with other inputs (its job.json
    records the key of its items, model and options; any engine)."""
    try:
        meta = json.loads((jobdir / "job.json").read_text())
    except (OSError, ValueError):
        meta = {}
    if not isinstance(meta, dict) or meta.get("key") != key:
        raise InputError(f"the unfinished job in {jobdir} was started with other items, model "
                         "or chunk size; run without --resume to start afresh.")


def _run_locked(name, items, spec, opts, progress, h: Path) -> "store.Dataset":
    if not opts.overwrite and name in {d["name"] for d in store.list_datasets(h)}:
        raise InputError(f"dataset {name!r} already exists; pass --overwrite or choose "
                         "another name.")
    say = progress or (lambda stage, done, total: None)
    lm = embed.load_model(spec, opts.device)
    job = h / "jobs" / name
    key = _job_key(items, spec, opts)
    meta_path = job / "job.json"
    if job.exists() and opts.resume:
        check_resumable(job, key)
    else:
        if job.exists():
            shutil.rmtree(job)
        (job / "thumbs").mkdir(parents=True)
        meta_path.write_text(json.dumps({"format": JOB_FORMAT, "key": key, "name": name,
                                         "job_id": os.urandom(8).hex(), "pid": os.getpid(),
                                         "model": spec.to_manifest(),
                                         "started": time.time()}))
    bs = opts.batch_size or lm.default_batch_size
    workers = embed.default_workers() if opts.workers is None else opts.workers
    n_img, n_txt = len(items.images), len(items.texts)
    paths = items.images["path"].tolist()

    # Images, chunk by chunk.
    n_chunks = (n_img + opts.chunk_rows - 1) // opts.chunk_rows
    for c in range(n_chunks):
        out = job / f"image_{c:05d}.npz"
        if out.exists():
            if _chunk_ok(out, ("emb", "rows", "failed_rows", "failed_reasons")):
                say("images", min((c + 1) * opts.chunk_rows, n_img), n_img)
                continue
            out.unlink()
            say(f"images (chunk {c} was damaged: recomputing it)", c * opts.chunk_rows, n_img)
        rows = np.arange(c * opts.chunk_rows, min((c + 1) * opts.chunk_rows, n_img))
        loader = DataLoader(_ImageRows(paths, rows, lm.preprocess, job / "thumbs", opts.limits),
                            batch_size=bs, num_workers=workers, collate_fn=_collate,
                            persistent_workers=False)
        embs, ok_rows, failed = [], [], []
        for pixels, ok, bad in loader:
            if bad and opts.strict:
                raise InputError(f"{bad[0][1]} (--strict stops at the first bad item)")
            failed += bad
            if pixels is not None:
                embs.append(embed.encode_image_batch(lm, pixels))
                ok_rows += ok
            say("images", int(rows[0]) + len(ok_rows) + len(failed), n_img)
        emb = np.concatenate(embs) if embs else np.zeros((0, lm.dim), np.float32)
        _save_npz_atomic(out, emb=emb.astype(np.float32), rows=np.asarray(ok_rows, np.int64),
                         failed_rows=np.asarray([r for r, _ in failed], np.int64),
                         failed_reasons=np.asarray([e for _, e in failed], dtype=str))

    # Captions.
    captions = items.texts["caption"].astype(str).tolist()
    truncated = embed.count_truncated(lm, captions)
    t_chunks = (n_txt + opts.chunk_rows - 1) // opts.chunk_rows
    for c in range(t_chunks):
        out = job / f"text_{c:05d}.npz"
        if out.exists() and not _chunk_ok(out, ("emb",)):
            out.unlink()
            say(f"captions (chunk {c} was damaged: recomputing it)", c * opts.chunk_rows, n_txt)
        if not out.exists():
            part = captions[c * opts.chunk_rows:(c + 1) * opts.chunk_rows]
            _save_npz_atomic(out, emb=embed.encode_texts(lm, part, bs * 4))
        say("captions", min((c + 1) * opts.chunk_rows, n_txt), n_txt)

    try:
        ds = _assemble(name, items, lm, job, n_chunks, t_chunks, truncated, bs, opts, h)
    except InputError:
        shutil.rmtree(job, ignore_errors=True)   # e.g. every image failed: nothing to resume
        raise
    shutil.rmtree(job, ignore_errors=True)
    if opts.build_index:
        from . import index
        for modality in ("image", "text"):
            say(f"index ({modality})", 0, 1)
            index.build_index(ds, modality)
            say(f"index ({modality})", 1, 1)
    return ds


def _model_manifest(lm) -> dict:
    """The spec plus the model's learned temperature (pages default to it)."""
    out = lm.spec.to_manifest()
    if lm.temperature is not None:
        # 4 decimals: the value the pages' τ control shows and reports are keyed by
        out["temperature"] = round(lm.temperature, 4)
    return out


def _no_image_message(skipped: list[dict], show: int = 3) -> str:
    """Why no dataset could be made: every image failed (with the first reasons,
    each naming its file), or there was no image at all."""
    if not skipped:
        return ("no image could be embedded: the import holds no image files. Add images "
                "(JPEG, PNG, WebP, BMP, GIF or TIFF) next to the captions file.")
    lines = []
    for s in skipped[:show]:
        item, reason = str(s.get("item", "")), str(s.get("reason", "")).rstrip(". ")
        lines.append(reason if item and item in reason else f"{item}: {reason}")
    more = f" (and {len(skipped) - show} more)" if len(skipped) > show else ""
    return (f"every image failed, so no dataset was created ({len(skipped)} item(s) "
            f"skipped). First reasons: " + "; ".join(lines) + more + ". Check that the "
            "files are readable images and that the captions file names them.")


def _assemble(name, items: ItemList, lm, job: Path, n_chunks: int, t_chunks: int,
              truncated: int, bs: int, opts: JobOptions, h: Path) -> "store.Dataset":
    embs, rows, skipped = [], [], [dict(item=s.item, reason=s.reason) for s in items.skipped]
    for c in range(n_chunks):
        with np.load(job / f"image_{c:05d}.npz", allow_pickle=False) as z:
            embs.append(z["emb"])
            rows.append(z["rows"])
            for r, why in zip(z["failed_rows"], z["failed_reasons"]):
                skipped.append(dict(item=str(items.images["source"].iloc[int(r)]),
                                    reason=str(why)))
    image_emb = np.concatenate(embs) if embs else np.zeros((0, lm.dim), np.float32)
    ok_rows = np.concatenate(rows) if rows else np.zeros(0, np.int64)
    if len(image_emb) == 0:
        n_ingest = len(items.skipped)      # decoding failures first: they name images
        raise InputError(_no_image_message(skipped[n_ingest:] + skipped[:n_ingest]))
    order = np.argsort(ok_rows, kind="stable")
    image_emb, ok_rows = image_emb[order], ok_rows[order]
    texts = []
    for c in range(t_chunks):
        with np.load(job / f"text_{c:05d}.npz", allow_pickle=False) as z:
            texts.append(z["emb"])
    text_emb = np.concatenate(texts) if texts else np.zeros((0, lm.dim), np.float32)

    thumbs = job / "thumbs"
    images, texts_df = dataset_tables(items, ok_rows, thumbs, skipped)
    extra = {"skipped": skipped,
             "embedding": {"device": str(lm.device), "batch_size": bs,
                           "autocast": str(lm.autocast_dtype) if lm.autocast_dtype else None,
                           "truncated_captions": int(truncated),
                           "context_length": lm.context_length,
                           "normalized": False}}
    return store.create_dataset(name, image_emb, text_emb, images, texts_df,
                                model=_model_manifest(lm), source=items.source,
                                extra_manifest=extra, overwrite=opts.overwrite, home=h,
                                thumbs_dir=thumbs)


def dataset_tables(items: ItemList, ok_rows: np.ndarray, thumbs: Path, skipped: list):
    """The stored images and texts tables of the embedded rows ``ok_rows``
    (sorted rows of ``items.images``): thumbnails ``thumbs/<row:08d>.jpg``
    renamed to ``t<new row:08d>.jpg`` (others removed), captions of skipped
    images kept unpaired (noted in ``skipped``). Shared with the Ray engine."""
    images = items.images.iloc[ok_rows].drop(columns=["path"]).reset_index(drop=True)
    final_thumbs = []
    for new_row, old_row in enumerate(ok_rows):
        src = thumbs / f"{int(old_row):08d}.jpg"
        dst = thumbs / f"t{new_row:08d}.jpg"
        if src.exists():
            os.replace(src, dst)
            final_thumbs.append(dst.name)
        else:
            final_thumbs.append(None)
    images["thumbnail"] = final_thumbs
    keep = {t for t in final_thumbs if t}
    for f in thumbs.iterdir():          # thumbnails of rows that failed later
        if f.name not in keep:
            f.unlink()
    kept_ids = set(images["image_id"])
    texts_df = items.texts.copy()
    lost = texts_df["image_id"].notna() & ~texts_df["image_id"].isin(kept_ids)
    if lost.any():
        # Captions of images that failed stay in the dataset, unpaired.
        skipped.append(dict(item=f"{int(lost.sum())} caption(s)",
                            reason="their image was skipped; kept as unpaired captions"))
        texts_df.loc[lost, "image_id"] = None
    return images, texts_df
