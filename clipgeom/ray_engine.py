"""The embedding job on Ray Data: the local job's raw float32 embeddings, on a cluster.

``python -m clipgeom embed NAME ... --engine ray [--address ADDR]
[--gpus-per-worker G] [--workers N]``, or :func:`run` from Python.

Pipeline
--------
The items become a Ray Dataset: an :class:`~clipgeom.ingest.ItemList` (image
folder + captions, COCO, zip) as blocks of rows, or WebDataset shards read by
``ray.data.read_webdataset`` (:mod:`clipgeom.webdataset` decides which
samples are usable, as it does for the local engine). Images are decoded,
thumbnailed and preprocessed in CPU tasks (:func:`clipgeom.job.decode_image`,
the local job's own function), then a ``map_batches`` actor pool holding the
open_clip model (:func:`clipgeom.embed.load_model`; one actor per GPU when
the cluster has GPUs, CPU actors otherwise) computes
``encode_image/encode_text(normalize=False)`` with the local job's functions.
Nothing is normalised.

Shards, resume, assembly
------------------------
The driver receives the embeddings and writes them to
``<CLIPGEOM_HOME>/jobs/<name>/ray/`` one *unit* at a time, as each unit is
complete: ``<unit>.image.npy`` / ``<unit>.text.npy`` (float32) with
``<unit>.image_ids.npy`` / ``<unit>.text_ids.npy`` (int64: the item rows,
or the sample positions in a tar), thumbnails, and last, atomically,
``<unit>.json`` (skipped items, counts): a unit is finished when its JSON
reads back with arrays of the recorded shapes. Units are ``chunk_rows``
rows of an ItemList's images or texts, or one tar of a WebDataset. A
resumed run (``resume=True``) sends only unfinished units to Ray. Only the
driver writes, so workers need no shared file system (they do need to read
the inputs: see the README). When every unit is done the arrays are copied
unit by unit into memory-mapped ``.npy`` files (never all in RAM) and the
dataset is created through the store's atomic create, under the name's
writer lock, as the local job does; then the job folder is removed.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
import tempfile
import time
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Optional, Union

import numpy as np

from . import embed, job, store
from . import webdataset as wds
from ._atomic import replacing
from .errors import ClipgeomError, InputError
from .images import ImageLimits
from .ingest import ItemList

JOB_FORMAT = 1
INSTALL = "pip install 'clipgeom[ray]'  (or: pip install 'ray[data]==2.60.0')"
#: Rows per Ray block of an ItemList (a few units each).
BLOCK_ROWS = 4096


@dataclass(frozen=True)
class RayOptions:
    """Where and how wide the Ray job runs.

    address: an existing cluster (``ray://host:10001`` or ``host:6379``);
    None: ``RAY_ADDRESS`` if set, else a local Ray started for this job (and
    stopped after it), unless this process is already connected.
    workers: model actors (default: one per ``gpus_per_worker`` GPUs when the
    cluster has GPUs, else half the cluster's CPUs, at least 1).
    gpus_per_worker: GPUs per actor (fractions share a GPU; default 1 when
    the cluster has GPUs, else 0: CPU actors).
    cpus_per_worker: CPUs reserved by each actor (its torch threads on CPU).
    """

    address: Optional[str] = None
    workers: Optional[int] = None
    gpus_per_worker: Optional[float] = None
    cpus_per_worker: float = 1.0


def import_ray():
    """``ray`` with Ray Data, or an InputError that says how to install it."""
    try:
        import ray
        import ray.data  # noqa: F401
    except ImportError as exc:
        raise InputError(f"the ray engine needs Ray Data, which is not installed here "
                         f"({exc}). Install the extra: {INSTALL}.") from None
    return ray


# --------------------------------------------------------------------------
# Remote side: decoding tasks and the model actor
# --------------------------------------------------------------------------

def _open_member(data: bytes, path, limits: ImageLimits):
    return wds.open_image_bytes(data, path, limits)


def _decoded(items, preprocess, limits):
    """Decode ``items`` [(where, opener) or None] in one temporary folder with the
    local job's :func:`clipgeom.job.decode_image`: pixels (float32 bytes, b""
    when there are none), ok flags, reasons, thumbnail JPEG bytes."""
    n = len(items)
    pixels = np.full(n, b"", dtype=object)
    ok = np.zeros(n, bool)
    reasons = np.full(n, "", dtype=object)
    thumbs = np.full(n, b"", dtype=object)
    with tempfile.TemporaryDirectory(prefix="clipgeom-decode-") as tmp:
        for i, todo in enumerate(items):
            if todo is None:
                continue
            where, opener = todo
            t = Path(tmp) / f"{i}.jpg"
            pix, err = job.decode_image(where, preprocess, limits, t, opener=opener)
            if err is not None:
                reasons[i] = err
                continue
            # Bytes, not a tensor column: caption rows in the same batch carry none.
            pixels[i] = pix.numpy().astype(np.float32, copy=False).tobytes()
            ok[i] = True
            if t.exists():
                thumbs[i] = t.read_bytes()
    return pixels, ok, reasons, thumbs


def _decode_items(batch, preprocess, limits):
    """CPU task: an ItemList's rows (kind 0: an image path, kind 1: a caption)
    -> image pixels; a row that fails carries the reason."""
    kinds = np.asarray(batch["kind"])
    todo = [(str(p), job.open_image) if k == 0 else None
            for k, p in zip(kinds, batch["path"])]
    pixels, ok, reasons, thumbs = _decoded(todo, preprocess, limits)
    n = len(kinds)
    return {"unit": batch["unit"], "row": batch["row"], "kind": kinds,
            "status": np.where((kinds == 0) & ~ok, 1, 0).astype(np.int8),
            "pixels": pixels, "image_ok": ok, "reason": reasons, "thumb": thumbs,
            "caption": batch["caption"], "has_text": kinds == 1,
            "item": np.full(n, "", dtype=object), "key": np.full(n, "", dtype=object),
            "ext": np.full(n, "", dtype=object)}


def _url_unit(url: str, units: dict) -> int:
    url = str(url)
    if url in units:
        return units[url]
    hits = {u for p, u in units.items() if url.endswith(p) or p.endswith(url)}
    if len(hits) != 1:
        raise RuntimeError(f"a WebDataset row names shard {url!r}, which is not one of the "
                           "shards of this job.")
    return hits.pop()


def _decode_samples(batch, preprocess, limits, shards, units):
    """CPU task: WebDataset rows (raw member bytes) -> checked samples, pixels."""
    n = len(batch["__key__"])
    unit = np.zeros(n, np.int32)
    status = np.zeros(n, np.int8)          # 0 ok, 1 image failed, 2 sample skipped
    key, ext, caption, item, skip_reason = ([""] * n for _ in range(5))
    todo = []
    cols = [c for c in batch if not c.startswith("__")]
    for i in range(n):
        unit[i] = u = _url_unit(batch["__url__"][i], units)
        members = {c: batch[c][i] for c in cols}
        sample, skip = wds.check_sample(shards[u], str(batch["__key__"][i]), members, limits)
        if skip is not None:
            status[i], item[i], skip_reason[i] = 2, skip.item, skip.reason
            todo.append(None)
            continue
        key[i], ext[i], caption[i] = sample.key, sample.ext, sample.caption
        item[i] = f"{shards[u]}/{sample.key}.{sample.ext}"
        todo.append((item[i], partial(_open_member, sample.image)))
    pixels, ok, reasons, thumbs = _decoded(todo, preprocess, limits)
    status[(status == 0) & ~ok] = 1
    reasons = np.array([skip_reason[i] if status[i] == 2 else reasons[i] for i in range(n)],
                       dtype=object)
    return {"unit": unit, "row": np.full(n, -1, np.int64), "kind": np.full(n, 2, np.int8),
            "status": status, "pixels": pixels, "image_ok": ok, "reason": reasons,
            "thumb": thumbs, "caption": np.array(caption, dtype=object),
            "has_text": status != 2, "item": np.array(item, dtype=object),
            "key": np.array(key, dtype=object), "ext": np.array(ext, dtype=object)}


class _Embedder:
    """The actor: one open_clip model; raw image and text embeddings per batch
    (the local job's ``encode_image_batch`` / ``encode_texts``)."""

    def __init__(self, spec: embed.ModelSpec, device: str, threads: int, pixel_shape):
        import torch

        if device == "cpu":
            torch.set_num_threads(max(1, threads))
        self.lm = embed.load_model(spec, device)
        self.torch, self.pixel_shape = torch, tuple(pixel_shape)
        amp = self.lm.autocast_dtype
        self.info = f"{self.lm.device}|{amp if amp else ''}"

    def __call__(self, batch: dict) -> dict:
        lm, n = self.lm, len(batch["unit"])
        out = {k: v for k, v in batch.items() if k != "pixels"}
        emb = np.zeros((n, lm.dim), np.float32)
        ok = np.asarray(batch["image_ok"], bool)
        if ok.any():
            px = np.stack([np.frombuffer(b, np.float32).reshape(self.pixel_shape)
                           for b in batch["pixels"][ok]])
            emb[ok] = embed.encode_image_batch(lm, self.torch.from_numpy(px))
        temb = np.zeros((n, lm.dim), np.float32)
        trunc = np.zeros(n, bool)
        has = np.asarray(batch["has_text"], bool)
        caps = [str(c) for c in np.asarray(batch["caption"])[has]]
        if caps:
            temb[has] = embed.encode_texts(lm, caps, batch_size=len(caps))
            trunc[has] = [embed.count_truncated(lm, [c]) > 0 for c in caps]
        out.update(image_emb=emb, text_emb=temb, truncated=trunc,
                   device=np.full(n, self.info, dtype=object))
        return out


# --------------------------------------------------------------------------
# Units on disk
# --------------------------------------------------------------------------

def _save_npy(path: Path, arr: np.ndarray) -> None:
    with replacing(path) as tmp, open(tmp, "wb") as f:
        np.save(f, arr, allow_pickle=False)


def _write_unit(jobdir: Path, unit: str, meta: dict, arrays: dict) -> None:
    """Arrays first, the JSON last (atomically): the JSON marks the unit done."""
    shapes = {}
    for part, arr in arrays.items():
        _save_npy(jobdir / f"{unit}.{part}.npy", arr)
        shapes[part] = list(arr.shape)
    meta = dict(meta, unit=unit, arrays=shapes)
    with replacing(jobdir / f"{unit}.json", fsync=True) as tmp:
        tmp.write_text(json.dumps(meta))


def _read_unit(jobdir: Path, unit: str) -> Optional[dict]:
    """The unit's JSON when the unit is complete (its arrays read back with the
    recorded shapes), else None (it is computed again)."""
    try:
        meta = json.loads((jobdir / f"{unit}.json").read_text())
        for part, shape in meta["arrays"].items():
            arr = np.load(jobdir / f"{unit}.{part}.npy", mmap_mode="r", allow_pickle=False)
            if list(arr.shape) != shape:
                return None
        return meta
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _load(jobdir: Path, unit: str, part: str) -> np.ndarray:
    return np.load(jobdir / f"{unit}.{part}.npy", mmap_mode="r", allow_pickle=False)


# --------------------------------------------------------------------------
# The job
# --------------------------------------------------------------------------

Source = Union[ItemList, wds.Shards]


def run(name: str, source: Source, spec: embed.ModelSpec,
        opts: job.JobOptions = job.JobOptions(), ray_opts: RayOptions = RayOptions(),
        progress: job.Progress = None, home=None) -> "store.Dataset":
    """Embed ``source`` (an ItemList, or :class:`clipgeom.webdataset.Shards`)
    with ``spec`` on Ray into dataset ``name``: the local job's arrays, tables,
    skipped items and thumbnails. ``opts`` as for :func:`clipgeom.job.run`
    (``workers`` is ignored: ``ray_opts.workers`` sizes the actor pool;
    ``chunk_rows`` is the unit of an ItemList; ``device`` defaults to cuda
    for GPU actors, else cpu). Holds the name's writer lock throughout."""
    store.check_name(name)
    h = store.home() if home is None else Path(home)
    ray = import_ray()
    with store.writer_lock(name, f"Ray embedding job for {name!r}", home=h):
        return _Job(ray, name, source, spec, opts, ray_opts, progress, h).run()


class _Job:
    def __init__(self, ray, name, source, spec, opts, ray_opts, progress, h):
        self.ray, self.name, self.source, self.spec = ray, name, source, spec
        self.opts, self.ray_opts, self.h = opts, ray_opts, h
        self.say = progress or (lambda stage, done, total: None)
        self.is_wds = isinstance(source, wds.Shards)
        self.jobdir = h / "jobs" / name / "ray"
        self.reused = 0
        self.devices: set = set()

    # -- set-up ------------------------------------------------------------
    def run(self) -> "store.Dataset":
        opts = self.opts
        if not opts.overwrite and self.name in {d["name"] for d in store.list_datasets(self.h)}:
            raise InputError(f"dataset {self.name!r} already exists; pass --overwrite or "
                             "choose another name.")
        # The driver's copy of the model: metadata, preprocessing, tokenizer.
        lm = embed.load_model(self.spec, "cpu")
        self.model_manifest = job._model_manifest(lm)
        self.dim, self.context_length = lm.dim, lm.context_length
        self.preprocess = lm.preprocess
        from PIL import Image
        self.pixel_shape = tuple(lm.preprocess(Image.new("RGB", (8, 8))).shape)
        del lm
        self._open_jobdir()
        started = self._connect()
        try:
            self._plan_resources()
            if self.is_wds:
                self._run_webdataset()
            else:
                self._run_items()
        finally:
            if started:
                self.ray.shutdown()
        ds = self._assemble()
        shutil.rmtree(self.jobdir, ignore_errors=True)
        try:
            self.jobdir.parent.rmdir()        # jobs/<name>/ when nothing else is in it
        except OSError:
            pass
        if opts.build_index:
            from . import index
            for modality in ("image", "text"):
                self.say(f"index ({modality})", 0, 1)
                index.build_index(ds, modality)
                self.say(f"index ({modality})", 1, 1)
        return ds

    def _key(self) -> str:
        h = hashlib.sha256()
        h.update(f"ray-{JOB_FORMAT}".encode())
        if self.is_wds:
            h.update(json.dumps(self.spec.to_manifest(), sort_keys=True).encode())
            for p in self.source.paths:
                st = None if wds.is_remote(p) else os.stat(p)
                h.update(f"{p}\0{st.st_size if st else ''}\0{st.st_mtime_ns if st else ''}\n"
                         .encode())
        else:
            h.update(job._job_key(self.source, self.spec, self.opts).encode())
        return h.hexdigest()

    def _open_jobdir(self) -> None:
        key, meta_path = self._key(), self.jobdir / "job.json"
        if self.jobdir.exists() and self.opts.resume:
            job.check_resumable(self.jobdir, key)
            return
        if self.jobdir.exists():
            shutil.rmtree(self.jobdir)
        (self.jobdir / "thumbs").mkdir(parents=True)
        meta_path.write_text(json.dumps({"format": JOB_FORMAT, "engine": "ray", "key": key,
                                         "name": self.name, "model": self.spec.to_manifest(),
                                         "pid": os.getpid(), "started": time.time()}))

    def _connect(self) -> bool:
        """Connect to Ray; True when this job started a local Ray (stopped after)."""
        ray = self.ray
        if ray.is_initialized():
            return False
        address = self.ray_opts.address or os.environ.get("RAY_ADDRESS")
        try:
            # No address: the cluster `ray start` runs on this node (a KubeRay
            # head pod), else a new local Ray.
            ray.init(address=address or None, log_to_driver=False)
        except Exception as exc:  # ConnectionError, ValueError, RuntimeError ...
            where = f"the Ray cluster at {address}" if address else "a local Ray"
            raise InputError(f"could not start or reach {where}: "
                             f"{str(exc).splitlines()[0][:300]}") from None
        return True

    def _plan_resources(self) -> None:
        res = self.ray.cluster_resources()
        gpus, cpus = float(res.get("GPU", 0)), float(res.get("CPU", 1))
        ro = self.ray_opts
        g = ro.gpus_per_worker if ro.gpus_per_worker is not None else (1.0 if gpus else 0.0)
        if g < 0 or (ro.workers is not None and ro.workers < 1):
            raise InputError("--gpus-per-worker must be >= 0 and --workers >= 1.")
        if g > 0 and gpus < g:
            raise InputError(f"--gpus-per-worker {g:g} asks for GPUs, but the Ray cluster has "
                             f"{gpus:g}; use --gpus-per-worker 0 for CPU workers.")
        self.gpus_per_worker = g
        self.workers = ro.workers or (max(1, int(gpus // g)) if g else max(1, int(cpus // 2)))
        if not g and self.workers * ro.cpus_per_worker > cpus - 1:
            raise InputError(f"{self.workers} CPU worker(s) of {ro.cpus_per_worker:g} CPU on a "
                             f"Ray cluster of {cpus:g} CPUs leave none for decoding images; "
                             "use fewer --workers.")
        self.device = self.opts.device or ("cuda" if g else "cpu")
        self.batch = self.opts.batch_size or embed.DEFAULT_BATCH.get(
            self.device.split(":")[0], 32)

    # -- the Ray pipelines ---------------------------------------------------
    def _pipeline(self, ds, decode_fn, **kw):
        """``ds`` -> CPU decoding tasks -> the model actor pool."""
        # The decoding tasks reserve memory for the largest image they may hold;
        # being unlike the actors' resources, that also keeps Ray from fusing
        # them into the actors on CPU-only clusters: decoding runs beside the model.
        ds = ds.map_batches(
            partial(decode_fn, preprocess=self.preprocess, limits=self.opts.limits, **kw),
            batch_size=self.batch, batch_format="numpy", num_cpus=1,
            memory=_decode_memory(self.opts.limits))
        return ds.map_batches(
            _Embedder, batch_size=self.batch, batch_format="numpy",
            compute=self.ray.data.ActorPoolStrategy(size=self.workers),
            fn_constructor_kwargs=dict(spec=self.spec, device=self.device,
                                       threads=int(self.ray_opts.cpus_per_worker),
                                       pixel_shape=self.pixel_shape),
            num_cpus=self.ray_opts.cpus_per_worker, num_gpus=self.gpus_per_worker or None)

    def _iterate(self, ds, preserve_order: bool = False):
        """Batches of the executed pipeline; errors raised remotely as clipgeom
        errors come back as themselves."""
        ds.context.execution_options.preserve_order = preserve_order   # this run only
        ds.context.enable_progress_bars = False      # the caller's progress reports instead
        try:
            for batch in ds.iter_batches(batch_size=None, batch_format="numpy"):
                if "device" in batch and len(batch["device"]):
                    self.devices.update(str(d) for d in set(batch["device"]))
                yield batch
        except Exception as exc:
            cause = _clipgeom_cause(exc)
            if cause is not None:            # e.g. an InputError raised in a task
                raise cause from None
            if self.is_wds and any(w in str(exc) for w in ("tar", "WebDataset")):
                raise InputError(f"reading the WebDataset shards failed ({_root_cause(exc)}); "
                                 "check that every shard is a tar file.") from None
            raise

    def _run_items(self) -> None:
        import pandas as pd

        items, R = self.source, self.opts.chunk_rows
        if R < 1:
            raise InputError("--chunk-rows must be at least 1.")
        n_img, n_txt = len(items.images), len(items.texts)
        self.image_units = [f"image_{c:05d}" for c in range(math.ceil(n_img / R))]
        self.text_units = [f"text_{c:05d}" for c in range(math.ceil(n_txt / R))]
        units = self.image_units + self.text_units
        todo = [k for k, u in enumerate(units) if not self._done(u)]
        total = n_img + n_txt
        if not todo:
            self.say("images and captions", total, total)
            return
        n_iu = len(self.image_units)
        paths = items.images["path"].astype(str).to_numpy()
        caps = items.texts["caption"].astype(str).to_numpy()
        frames, expected = [], {}
        for k in todo:
            kind, c = (0, k) if k < n_iu else (1, k - n_iu)
            rows = np.arange(c * R, min((c + 1) * R, n_img if kind == 0 else n_txt))
            expected[k] = len(rows)
            frames.append(pd.DataFrame({
                "unit": np.full(len(rows), k, np.int32), "row": rows,
                "kind": np.full(len(rows), kind, np.int8),
                "path": paths[rows] if kind == 0 else np.full(len(rows), ""),
                "caption": caps[rows] if kind == 1 else np.full(len(rows), "")}))
        frame = pd.concat(frames, ignore_index=True)
        ds = self._pipeline(self.ray.data.from_pandas(_blocks(frame)), _decode_items)
        pending: dict = {}
        done = total - sum(expected.values())
        self.say("images and captions", done, total)
        for b in self._iterate(ds):
            for i in range(len(b["row"])):
                k, row = int(b["unit"][i]), int(b["row"][i])
                p = pending.setdefault(k, {"rows": [], "emb": [], "failed": [], "trunc": 0})
                if b["kind"][i] == 1:
                    p["rows"].append(row)
                    p["emb"].append(b["text_emb"][i])
                    p["trunc"] += int(b["truncated"][i])
                elif b["image_ok"][i]:
                    p["rows"].append(row)
                    p["emb"].append(b["image_emb"][i])
                    if len(b["thumb"][i]):
                        (self.jobdir / "thumbs" / f"{row:08d}.jpg").write_bytes(b["thumb"][i])
                else:
                    if self.opts.strict:
                        raise InputError(f"{b['reason'][i]} (--strict stops at the first "
                                         "bad item)")
                    p["failed"].append([row, str(b["reason"][i])])
                n_seen = len(p["rows"]) + len(p["failed"])
                if n_seen == expected[k]:
                    self._finish_rows_unit(units[k], pending.pop(k))
                    done += n_seen
                    self.say("images and captions", done, total)
        if pending:
            raise RuntimeError(f"Ray returned incomplete units {sorted(pending)}.")

    def _done(self, unit: str) -> bool:
        if _read_unit(self.jobdir, unit) is not None:
            self.reused += 1
            return True
        return False

    def _finish_rows_unit(self, unit: str, p: dict) -> None:
        modality = unit.split("_")[0]
        order = np.argsort(p["rows"], kind="stable")
        rows = np.asarray(p["rows"], np.int64)[order]
        emb = (np.stack(p["emb"]).astype(np.float32)[order] if p["emb"]
               else np.zeros((0, self.dim), np.float32))
        meta = {"failed": sorted(p["failed"]), "truncated": p["trunc"]}
        _write_unit(self.jobdir, unit, meta, {modality: emb, f"{modality}_ids": rows})

    def _run_webdataset(self) -> None:
        paths = list(self.source.paths)
        self.units = [f"shard_{k:05d}" for k in range(len(paths))]
        todo = [k for k, u in enumerate(self.units) if not self._done(u)]
        self.shards_done = len(paths) - len(todo)
        self.say("samples (shards)", self.shards_done, len(paths))
        if not todo:
            return
        units = {}
        for k in range(len(paths)):
            p = paths[k]
            units[p] = k
            if not wds.is_remote(p):
                units[os.path.abspath(p)] = k
            else:
                units[p.split("://", 1)[1]] = k
        ds = self.ray.data.read_webdataset([paths[k] for k in todo], decoder=None,
                                           suffixes=wds.wanted_suffix)
        ds = self._pipeline(ds, _decode_samples, shards=paths, units=units)
        # In order: a shard is whole when the next one starts (or the stream ends).
        queue, cur, acc = list(todo), None, None
        for b in self._iterate(ds, preserve_order=True):
            for i in range(len(b["unit"])):
                k = int(b["unit"][i])
                if k != cur:
                    if k not in queue:
                        raise RuntimeError(f"rows of shard {paths[k]} arrived out of order.")
                    while queue[0] != k:             # shards with no sample at all
                        self._finish_shard(queue.pop(0), _new_acc())
                    if cur is not None:
                        self._finish_shard(cur, acc)
                    queue.pop(0)
                    cur, acc = k, _new_acc()
                self._add_sample(cur, acc, b, i)
        if cur is not None:
            self._finish_shard(cur, acc)
        for k in queue:
            self._finish_shard(k, _new_acc())

    def _add_sample(self, k: int, acc: dict, b: dict, i: int) -> None:
        j, status = len(acc["records"]), int(b["status"][i])
        if status == 2:
            if self.opts.strict:
                raise InputError(f"{b['item'][i]}: {b['reason'][i]} (strict mode stops at "
                                 "the first bad item)")
            acc["records"].append(["skip", str(b["item"][i]), str(b["reason"][i])])
            return
        acc["records"].append(["ok", str(b["key"][i]), str(b["ext"][i]), str(b["caption"][i])])
        acc["text_ids"].append(j)
        acc["text"].append(b["text_emb"][i])
        if b["truncated"][i]:
            acc["truncated"].append(j)
        if status == 0:
            acc["image_ids"].append(j)
            acc["image"].append(b["image_emb"][i])
            if len(b["thumb"][i]):
                (self.jobdir / "thumbs" / f"{self.units[k]}-{j:08d}.jpg").write_bytes(
                    b["thumb"][i])
        else:
            if self.opts.strict:
                raise InputError(f"{b['reason'][i]} (--strict stops at the first bad item)")
            acc["failed"].append([j, str(b["reason"][i])])

    def _finish_shard(self, k: int, acc: dict) -> None:
        def arr(xs):
            return np.stack(xs).astype(np.float32) if xs else np.zeros((0, self.dim), np.float32)
        meta = {"shard": self.source.paths[k], "records": acc["records"],
                "failed": acc["failed"], "truncated": acc["truncated"]}
        _write_unit(self.jobdir, self.units[k], meta,
                    {"image": arr(acc["image"]),
                     "image_ids": np.asarray(acc["image_ids"], np.int64),
                     "text": arr(acc["text"]),
                     "text_ids": np.asarray(acc["text_ids"], np.int64)})
        self.shards_done += 1
        self.say("samples (shards)", self.shards_done, len(self.units))

    # -- assembly -------------------------------------------------------------
    def _assemble(self) -> "store.Dataset":
        """Stream the finished units into memory-mapped arrays in the final row
        order, then create the dataset through the store."""
        self.say("assembling", 0, 1)
        work = self.jobdir / "assemble"
        if work.exists():
            shutil.rmtree(work)
        (work / "thumbs").mkdir(parents=True)
        if self.is_wds:
            items, image_parts, text_parts, failed, truncated = self._wds_parts(work)
        else:
            items, image_parts, text_parts, failed, truncated = self._items_parts(work)
        skipped = [dict(item=s.item, reason=s.reason) for s in items.skipped]
        skipped += [dict(item=str(items.images["source"].iloc[r]), reason=why)
                    for r, why in failed]
        ok_rows = (np.concatenate([rows[rows >= 0] for _, _, rows in image_parts])
                   if image_parts else np.zeros(0, np.int64))
        if len(ok_rows) == 0:
            n_ingest = len(items.skipped)
            shutil.rmtree(self.jobdir, ignore_errors=True)   # nothing to resume
            raise InputError(job._no_image_message(skipped[n_ingest:] + skipped[:n_ingest]))
        image_emb = _stream(work / "image_emb.npy", image_parts, self.dim)
        text_emb = _stream(work / "text_emb.npy", text_parts, self.dim)
        images, texts = job.dataset_tables(items, ok_rows, work / "thumbs", skipped)
        extra = {"skipped": skipped,
                 "embedding": {"engine": "ray", "device": self._device(),
                               "autocast": self._autocast(), "batch_size": self.batch,
                               "workers": self.workers,
                               "gpus_per_worker": self.gpus_per_worker,
                               "truncated_captions": int(truncated),
                               "context_length": self.context_length,
                               "resumed_units": self.reused,
                               "normalized": False}}
        source = items.source if not self.is_wds else self.source.source()
        self.say("assembling", 1, 1)
        return store.create_dataset(self.name, image_emb, text_emb, images, texts,
                                    model=self.model_manifest, source=source,
                                    extra_manifest=extra, overwrite=self.opts.overwrite,
                                    home=self.h, thumbs_dir=work / "thumbs")

    def _device(self) -> str:
        devs = sorted({d.split("|")[0] for d in self.devices})
        return ",".join(devs) if devs else self.device

    def _autocast(self):
        amps = sorted({d.split("|")[1] for d in self.devices if d.split("|")[1]})
        return ",".join(amps) if amps else None

    def _items_parts(self, work: Path):
        """(items, image parts, text parts, failed (row, reason), truncated) of an
        ItemList job; a part is (unit, array part, rows it fills in order)."""
        items, image_parts, text_parts, failed, trunc = self.source, [], [], [], 0
        for u in self.image_units:
            meta = _read_unit(self.jobdir, u)
            rows = np.asarray(_load(self.jobdir, u, "image_ids"))
            image_parts.append((u, "image", rows))
            failed += [(int(r), why) for r, why in meta["failed"]]
            for r in rows:
                src = self.jobdir / "thumbs" / f"{int(r):08d}.jpg"
                if src.exists():
                    _link(src, work / "thumbs" / src.name)
        for u in self.text_units:
            meta = _read_unit(self.jobdir, u)
            text_parts.append((u, "text", np.asarray(_load(self.jobdir, u, "text_ids"))))
            trunc += int(meta["truncated"])
        return items, image_parts, text_parts, failed, trunc

    def _wds_parts(self, work: Path):
        metas = [_read_unit(self.jobdir, u) for u in self.units]
        items, rows_of = wds.items_from_records(
            [m["shard"] for m in metas], [[tuple(r) for r in m["records"]] for m in metas],
            source=self.source.source(), root=Path("."), strict=self.opts.strict)
        image_parts, text_parts, failed, trunc = [], [], [], 0
        for u, m, rows in zip(self.units, metas, rows_of):
            rows = np.asarray(rows, np.int64)
            img_ids = np.asarray(_load(self.jobdir, u, "image_ids"))
            txt_ids = np.asarray(_load(self.jobdir, u, "text_ids"))
            image_parts.append((u, "image", rows[img_ids] if len(img_ids) else img_ids))
            text_parts.append((u, "text", rows[txt_ids] if len(txt_ids) else txt_ids))
            failed += [(int(rows[j]), why) for j, why in m["failed"] if rows[j] >= 0]
            trunc += sum(1 for j in m["truncated"] if rows[j] >= 0)
            for j in img_ids:
                src = self.jobdir / "thumbs" / f"{u}-{int(j):08d}.jpg"
                if rows[j] >= 0 and src.exists():
                    _link(src, work / "thumbs" / f"{int(rows[j]):08d}.jpg")
        return items, image_parts, text_parts, failed, trunc


def _clipgeom_cause(exc: BaseException):
    """The clipgeom error behind a Ray error (RayTaskError keeps it as
    ``.cause``), so users read its message, not a remote traceback."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, ClipgeomError) and type(exc).__module__.startswith("clipgeom"):
            return exc
        exc = getattr(exc, "cause", None) or exc.__cause__ or exc.__context__
    return None


def _root_cause(exc: BaseException) -> str:
    """``Type: message`` of the innermost non-Ray error behind ``exc``."""
    seen, found = set(), exc
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if not type(exc).__module__.startswith("ray"):
            found = exc
        exc = getattr(exc, "cause", None) or exc.__cause__ or exc.__context__
    lines = [ln for ln in str(found).strip().splitlines() if ln.strip()]
    return f"{type(found).__name__}: {(lines[0] if lines else '')[:300]}"   # Ray appends hints


def _decode_memory(limits: ImageLimits) -> int:
    """Bytes a decoding task reserves: its worker process (torch and torchvision
    imported, ~0.5 GiB) and the largest allowed image, read and decoded."""
    return int((512 << 20) + 8 * limits.max_pixels + 2 * limits.max_file_bytes)


def _new_acc() -> dict:
    return {"records": [], "image": [], "image_ids": [], "text": [], "text_ids": [],
            "failed": [], "truncated": []}


def _blocks(frame):
    """An ItemList frame as blocks of BLOCK_ROWS rows (Ray's unit of parallelism)."""
    return [frame.iloc[s:s + BLOCK_ROWS] for s in range(0, max(len(frame), 1), BLOCK_ROWS)]


def _link(src: Path, dst: Path) -> None:
    """A hard link (a copy where links are not allowed): the unit's thumbnail
    stays in place, so an assembly killed half-way can be run again."""
    try:
        os.link(src, dst)
    except OSError:
        shutil.copyfile(src, dst)


def _stream(path: Path, parts: list, dim: int) -> np.ndarray:
    """Copy the parts' rows (dropping rows mapped to -1, e.g. duplicate keys)
    unit by unit into a memory-mapped float32 ``.npy`` of the final shape."""
    jobdir = path.parent.parent
    n = int(sum(int((rows >= 0).sum()) for _, _, rows in parts))
    if n == 0:
        return np.zeros((0, dim), np.float32)
    out = np.lib.format.open_memmap(path, mode="w+", dtype=np.float32, shape=(n, dim))
    at = 0
    for unit, part, rows in parts:
        keep = rows >= 0
        if not keep.any():
            continue
        block = _load(jobdir, unit, part)
        sel = block if keep.all() else block[np.flatnonzero(keep)]
        out[at:at + len(sel)] = sel
        at += len(sel)
    out.flush()
    return out
