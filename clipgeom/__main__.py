"""The clipgeom command line: ``python -m clipgeom <command> ...`` or ``clipgeom``.

Every command prints what a user needs and exits non-zero with a one-line
message (no traceback) when the input is wrong, or when the machine refuses
(a read-only or full disk: ``clipgeom: error: <strerror>: <path>``). Output
piped into a reader that stops early (``| head``) ends quietly. CSV output
neutralises cells a spreadsheet would run as formulas
(:func:`clipgeom.safety.csv_cell`).
"""

from __future__ import annotations

import argparse
import csv
import errno
import json
import os
import sys
from pathlib import Path

from .errors import ClipgeomError, InputError
from .safety import csv_cell


def _cmd_list(args) -> int:
    from . import store

    rows = store.list_datasets()
    if args.json:
        print(json.dumps(rows, indent=2, default=str))
        return 0
    if not rows:
        print(f"no datasets under {store.home()}; create one with "
              "'python -m clipgeom import' or 'python -m clipgeom synthetic'")
        return 0
    for r in rows:
        if r.get("error"):
            print(f"{r['name']:24s} CORRUPT: {r['error']}")
            continue
        ro = " (read-only)" if r.get("read_only") else ""
        print(f"{r['name']:24s} {r['n_images']:>8} images {r['n_texts']:>8} texts "
              f"dim {r['dim']}{ro}")
    return 0


def _cmd_import(args) -> int:
    from . import store

    ds = store.import_arrays(args.name, args.image_emb, args.text_emb,
                             captions=args.captions, image_list=args.image_list,
                             labels=args.labels, overwrite=args.overwrite)
    norm = ds.normalized_input
    print(f"imported {ds.name}: {ds.n_images} images, {ds.n_texts} texts, dim {ds.dim}, "
          f"{len(ds.pairs()[0])} pairs -> {ds.path}")
    for mod in ("image", "text"):
        if norm.get(mod):
            print(f"note: the {mod} embeddings are already L2-normalised; norm-based "
                  "statistics will describe the unit sphere, not the raw shell")
    return 0


def _cmd_synthetic(args) -> int:
    from . import store, synthetic

    data = synthetic.two_shells(args.n, args.dim, seed=args.seed)
    import pandas as pd

    texts = pd.DataFrame({"text_id": [f"txt{k:06d}" for k in range(args.n)],
                          "caption": data.captions,
                          "image_id": [f"img{k:06d}" for k in range(args.n)]})
    images = pd.DataFrame({"image_id": [f"img{k:06d}" for k in range(args.n)],
                           "source": [f"synthetic:{k}" for k in range(args.n)]})
    ds = store.create_dataset(args.name, data.image, data.text, images, texts,
                              model={"kind": "none", "name": "synthetic two-shell generator"},
                              source={"kind": "synthetic", "generator": "two_shells",
                                      "n": args.n, "dim": args.dim, "seed": args.seed},
                              overwrite=args.overwrite)
    print(f"created SYNTHETIC dataset {ds.name}: {args.n} pairs, dim {args.dim} -> {ds.path}")
    return 0


def _cmd_report(args) -> int:
    from . import moments, parallel, report, store

    ds = store.open_dataset(args.name)
    progress = None if args.quiet else (lambda m: print(f"... {m}", file=sys.stderr))
    temperature = report.default_temperature(ds) if args.temperature is None \
        else args.temperature
    if args.address and args.engine != "ray":
        raise InputError("--address is for --engine ray.")
    rows = args.block_rows or moments.BLOCK_ROWS
    engine = moments.RayEngine(address=args.address, block_rows=rows) \
        if args.engine == "ray" else parallel.PoolEngine(rows)
    try:
        # the stored report: the dashboard's Home page reads this same file
        rep = report.stored_report(ds, temperature=temperature, max_pairs=args.max_pairs,
                                   seed=args.seed, progress=progress, engine=engine,
                                   recompute=args.recompute)
    finally:
        engine.close()
    if args.json:
        json.dump(rep, sys.stdout, allow_nan=False)
        sys.stdout.write("\n")
    else:
        print(report.summary_text(rep))
    return 0


def _cmd_compare(args) -> int:
    from . import compare

    progress = None if (args.quiet or args.json) else \
        (lambda m: print(f"... {m}", file=sys.stderr))
    cmp = compare.compare(args.names, temperature=args.temperature,
                          max_pairs=args.max_pairs, k=args.k, seed=args.seed,
                          progress=progress)
    if args.json:
        json.dump(cmp.to_json(), sys.stdout, allow_nan=False)
        sys.stdout.write("\n")
    else:
        print(compare.format_table(cmp))
    return 0


def _cmd_conformity(args) -> int:
    from . import conformity, store

    ds = store.open_dataset(args.name)
    if args.modality == "image":
        emb, table, label_col = ds.image_emb, ds.images, "source"
        ids = table["image_id"]
    else:
        emb, table, label_col = ds.text_emb, ds.texts, "caption"
        ids = table["text_id"]
    fit = conformity.fit_conformity(emb)
    out = csv.writer(sys.stdout)
    out.writerow(["id", "exact", "estimated", "cos_to_mean", label_col])
    # ids and captions/sources are user strings (csv_cell neutralises formulas);
    # the numbers are numbers, a leading minus included.
    for i in range(len(fit.exact)):
        out.writerow([csv_cell(ids.iloc[i]), f"{fit.exact[i]:.6f}",
                      f"{fit.estimated[i]:.6f}", f"{fit.cos_mean[i]:.6f}",
                      csv_cell(table[label_col].iloc[i])])
    return 0


def _cmd_verify(args) -> int:
    """Re-hash every file of the dataset(s) against the manifest; exit 2 on the first mismatch."""
    from . import store

    names = args.names or [r["name"] for r in store.list_datasets()]
    bad = 0
    for name in names:
        try:
            ds = store.verify_dataset(name)
        except ClipgeomError as exc:
            print(f"{name:24s} FAILED: {exc}")
            bad += 1
        else:
            print(f"{name:24s} ok: {ds.n_images} images, {ds.n_texts} texts, every file "
                  f"matches its sha256 (version {ds.version or 'flat'})")
    return 2 if bad else 0


def _cmd_delete(args) -> int:
    from . import store

    store.delete_dataset(args.name)
    print(f"deleted {args.name}")
    return 0


class _Bars:
    """tqdm bars per stage for (stage, done, total) progress callbacks (items/s, ETA)."""

    def __init__(self):
        self.bars = {}

    def __call__(self, stage: str, done: int, total: int) -> None:
        from tqdm import tqdm

        bar = self.bars.get(stage)
        if bar is None:
            bar = self.bars[stage] = tqdm(total=total, desc=stage, unit="item",
                                          file=sys.stderr, dynamic_ncols=True)
        bar.update(done - bar.n)
        if done >= total:
            bar.close()

    def close(self):
        for bar in self.bars.values():
            bar.close()


def _job_options(args):
    from .job import JobOptions

    return JobOptions(device=args.device, batch_size=args.batch_size, workers=args.workers,
                      chunk_rows=args.chunk_rows, strict=args.strict, resume=args.resume,
                      overwrite=args.overwrite, build_index=not args.no_index)


def _spec(args):
    from .embed import ModelSpec

    return ModelSpec(args.model, pretrained=args.pretrained, checkpoint=args.checkpoint)


def _embed(args, source, progress):
    """The local job, or the Ray engine (``--engine ray``) for an ItemList or
    WebDataset shards."""
    if getattr(args, "engine", "local") == "ray":
        from . import ray_engine

        ray_opts = ray_engine.RayOptions(address=args.address, workers=args.workers,
                                         gpus_per_worker=args.gpus_per_worker)
        return ray_engine.run(args.name, source, _spec(args), _job_options(args), ray_opts,
                              progress=progress)
    from . import job

    if getattr(args, "address", None) or getattr(args, "gpus_per_worker", None) is not None:
        raise ClipgeomError("--address and --gpus-per-worker go with --engine ray.")
    return job.run(args.name, source, _spec(args), _job_options(args), progress=progress)


def _run_job(args, items) -> int:
    skipped_before = getattr(items, "skipped", [])   # WebDataset shards on Ray: found later
    for s in skipped_before[:20]:
        print(f"skipped {s.item}: {s.reason}", file=sys.stderr)
    if len(skipped_before) > 20:
        print(f"... and {len(skipped_before) - 20} more skipped (listed in the manifest)",
              file=sys.stderr)
    bars = _Bars()
    try:
        ds = _embed(args, items, bars)
    finally:
        bars.close()
    skipped = ds.manifest.get("skipped") or []
    print(f"embedded {ds.name}: {ds.n_images} images, {ds.n_texts} captions, dim {ds.dim}, "
          f"{len(ds.pairs()[0])} pairs, {len(skipped)} skipped -> {ds.path}")
    trunc = (ds.manifest.get("embedding") or {}).get("truncated_captions")
    if trunc:
        print(f"warning: {trunc} caption(s) were longer than the model's context and truncated",
              file=sys.stderr)
    return 0


def _cmd_embed(args) -> int:
    from . import ingest

    if sum(bool(x) for x in (args.images, args.zip, args.webdataset)) > 1:
        raise ClipgeomError("give one of --images DIR, --zip FILE or --webdataset SHARDS.")
    if args.webdataset:
        return _embed_webdataset(args)
    if args.zip:
        import shutil
        import tempfile

        from . import store

        # Extracted beside the datasets (same disk), removed when the job ends.
        uploads = store.home() / "uploads"
        uploads.mkdir(parents=True, exist_ok=True)
        work = Path(tempfile.mkdtemp(prefix=f"{args.name}-", dir=uploads))
        try:
            items = ingest.from_zip(args.zip, work, strict=args.strict)
            return _run_job(args, items)
        finally:
            shutil.rmtree(work, ignore_errors=True)
    if not args.images:
        raise ClipgeomError("give --images DIR (with --captions FILE), --zip FILE or "
                            "--webdataset SHARDS.")
    items = ingest.from_folder(args.images, args.captions, strict=args.strict)
    return _run_job(args, items)


def _embed_webdataset(args) -> int:
    """WebDataset shards: read by Ray Data's reader on the ray engine; by
    tarfile (images written to a work folder beside the datasets) locally."""
    import shutil
    import tempfile

    from . import store, webdataset

    shards = webdataset.Shards.of(args.webdataset)
    if args.engine == "ray":
        return _run_job(args, shards)
    uploads = store.home() / "uploads"
    uploads.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f"{args.name}-", dir=uploads))
    try:
        return _run_job(args, webdataset.from_webdataset(shards, work, strict=args.strict))
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _cmd_coco(args) -> int:
    from . import ingest

    items = ingest.from_coco(args.annotations, args.images, limit=args.limit,
                             strict=args.strict)
    return _run_job(args, items)


def _cmd_fetch_coco(args) -> int:
    from . import fetch

    kwargs = {}
    if args.annotations_url:
        kwargs["annotations_url"] = args.annotations_url
    if args.images_url:
        kwargs["images_base_url"] = args.images_url
    bars = _Bars()
    try:
        result = fetch.fetch_coco(args.dir, split=args.split, limit=args.limit,
                                  progress=lambda d, t, label: bars(label, d, t), **kwargs)
    finally:
        bars.close()
    ann, images = result
    for s in result.failed:
        print(f"not downloaded: {s}", file=sys.stderr)
    print(f"annotations: {ann}\nimages: {images}\nnext: python -m clipgeom coco NAME "
          f"--annotations {ann} --images {images}")
    return 0


def _cmd_index(args) -> int:
    from . import index, store

    ds = store.open_dataset(args.name)
    mods = ("image", "text") if args.modality == "both" else (args.modality,)
    for m in mods:
        info = index.build_index(ds, m, force=args.force)
        print(f"{ds.name} {m}: {info.kind} index of {info.n} vectors "
              f"({info.build_seconds:.1f} s) in {ds.index_dir}")
    return 0


def _cmd_search(args) -> int:
    from . import search, store

    ds = store.open_dataset(args.name)
    res = search.run_query(ds, text=args.text, image=args.image, item=args.item,
                           item_modality=args.item_modality, target=args.target, k=args.k,
                           device=args.device)
    if args.json:
        print(json.dumps(res, indent=2))
        return 0
    print(f"query: {res['query']}  ->  {res['target']} ({res['index_kind']} index)")
    for r in res["results"]:
        print(f"{r['rank']:>3}  {r['score']:.4f}  {r['id']}  {r['label']}")
    return 0


def _cmd_demo_train(args) -> int:
    from .demo import train

    cfg = train.TrainConfig()
    if args.steps:
        cfg.steps = args.steps
    out = Path(args.out)
    res = train.train(cfg, out, progress=lambda d: print(json.dumps(d), file=sys.stderr))
    print(json.dumps(res["final"], indent=1))
    print(f"model written to {out}; build the demo dataset with "
          f"'python -m clipgeom demo build --model-dir {out}'")
    return 0


def _cmd_demo_build(args) -> int:
    from .demo import build

    bars = _Bars()
    try:
        out = build.build_demo(Path(args.model_dir), Path(args.out), n=args.n, progress=bars)
    finally:
        bars.close()
    print(f"demo dataset written to {out}")
    return 0


def _cmd_demo_coco(args) -> int:
    """fetch-coco, then coco: the paper's MS-COCO val2017 set in one command."""
    args.dir = args.dir or "coco"
    if _cmd_fetch_coco(args) != 0:
        return 1
    args.annotations = str(Path(args.dir) / "annotations" / f"captions_{args.split}.json")
    args.images = str(Path(args.dir) / args.split)
    return _cmd_coco(args)


def _cmd_jobs(args) -> int:
    from . import background

    cmd = args.jobs_command or "list"
    if cmd == "run":                     # the worker process of a background job
        return background.run_worker(args.id, args.attempt)
    if cmd == "list":
        jobs = background.list_jobs()
        if args.json:
            print(json.dumps([j.to_json() for j in jobs], indent=1))
            return 0
        for j in jobs:
            prog = j.progress
            where = (f" {prog.get('stage')}: {prog.get('done', 0):,} of {prog.get('total', 0):,}"
                     if prog and j.state not in background.TERMINAL else "")
            extra = f" -> {j.result}" if j.result else (f": {j.error}" if j.error else "")
            engine = f" [{j.engine}]" if j.engine else ""
            print(f"{j.id}  {j.label:<24} {j.title}{engine}{where}{extra}")
        return 0
    if cmd == "cancel":
        print(f"{args.id}: {background.cancel(args.id).label}")
        return 0
    if cmd == "resume":
        print(f"{args.id}: {background.resume(args.id).label}")
        return 0
    if cmd == "log":
        print(background.log_tail(args.id, args.lines))
        return 0
    raise ClipgeomError(f"unknown jobs command {cmd!r}")


def _add_job_args(s):
    s.add_argument("--model", default="ViT-B-32",
                   help="open_clip architecture, or a model config .json")
    s.add_argument("--pretrained", default=None, help="open_clip pretrained tag, e.g. openai")
    s.add_argument("--checkpoint", default=None, help="local weights file for --model")
    s.add_argument("--batch-size", type=int, default=None)
    s.add_argument("--device", default=None, help="cpu, cuda, cuda:N or mps (default: auto)")
    s.add_argument("--workers", type=int, default=None,
                   help="image decoding processes (with --engine ray: model actors)")
    s.add_argument("--chunk-rows", type=int, default=1024, help="rows per resumable chunk")
    s.add_argument("--resume", action="store_true", help="continue an interrupted job")
    s.add_argument("--strict", action="store_true", help="stop at the first bad item")
    s.add_argument("--overwrite", action="store_true")
    s.add_argument("--no-index", action="store_true", help="skip building FAISS indexes")


def _add_engine_choice(s, engine_help: str, address_help: str):
    """``--engine local|ray`` and the Ray cluster's ``--address``."""
    s.add_argument("--engine", choices=("local", "ray"), default="local", help=engine_help)
    s.add_argument("--address", default=None, help=address_help)


def _add_engine_args(s):
    _add_engine_choice(s, "local: this process; ray: Ray Data, on a local Ray or a cluster "
                          "(needs the 'ray' extra)",
                       "with --engine ray: the Ray cluster (host:6379 or ray://host:10001; "
                       "default $RAY_ADDRESS, else a local Ray)")
    s.add_argument("--gpus-per-worker", type=float, default=None,
                   help="with --engine ray: GPUs per model actor (default 1 when the "
                        "cluster has GPUs, else 0)")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="clipgeom", description=(
        "Geometry of CLIP embeddings before normalisation. Datasets live under "
        "$CLIPGEOM_HOME (default ./data)."))
    sub = p.add_subparsers(dest="command", required=True)

    s = sub.add_parser("list", help="list datasets")
    s.add_argument("--json", action="store_true")
    s.set_defaults(func=_cmd_list)

    s = sub.add_parser("import", help="import precomputed raw embeddings (.npy)")
    s.add_argument("name")
    s.add_argument("--image-emb", required=True, help="float array [n_images, d] (.npy)")
    s.add_argument("--text-emb", required=True, help="float array [n_texts, d] (.npy)")
    s.add_argument("--captions", help=".txt (one per line), .csv/.tsv or .jsonl with a "
                   "'caption' column and optional 'image' pairing column")
    s.add_argument("--image-list", help="one image path/source per line")
    s.add_argument("--labels", help="one label per image row")
    s.add_argument("--overwrite", action="store_true")
    s.set_defaults(func=_cmd_import)

    s = sub.add_parser("synthetic", help="create a SYNTHETIC two-shell dataset")
    s.add_argument("name")
    s.add_argument("--n", type=int, default=2000)
    s.add_argument("--dim", type=int, default=64)
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--overwrite", action="store_true")
    s.set_defaults(func=_cmd_synthetic)

    s = sub.add_parser("report", help="the geometry report of a dataset")
    s.add_argument("name")
    s.add_argument("--json", action="store_true", help="print one JSON object")
    s.add_argument("--temperature", type=float, default=None,
                   help="softmax temperature (default: the model's own learned one where "
                        "the dataset records it, else CLIP's 0.01)")
    s.add_argument("--max-pairs", type=int, default=5000,
                   help="pairs used as one batch for the loss (seeded sample above)")
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--quiet", action="store_true", help="no progress on stderr")
    _add_engine_choice(s, "where the passes over all rows run: row blocks in this process "
                          "(default) or Ray tasks (a local Ray, or --address)",
                       "Ray cluster address for --engine ray (e.g. auto, ray://host:10001); "
                       "workers must see the dataset's files at the same path")
    s.add_argument("--recompute", action="store_true",
                   help="recompute even if a stored report exists (and replace it)")
    s.add_argument("--block-rows", type=int, default=None,
                   help="rows per block (one task) of the passes over all rows "
                        "(default 16384)")
    s.set_defaults(func=_cmd_report)

    s = sub.add_parser("compare", help="compare datasets or training snapshots side by side")
    s.add_argument("names", nargs="+", metavar="NAME",
                   help="two or more datasets; NAME@STEP for a training snapshot (demo@2000)")
    s.add_argument("--json", action="store_true",
                   help="print one JSON object (schema clipgeom.compare/1)")
    s.add_argument("--temperature", type=float, default=None,
                   help="softmax temperature for every side (default: each model's own)")
    s.add_argument("--max-pairs", type=int, default=5000,
                   help="pairs per loss batch and aligned rows per cross-space sample")
    s.add_argument("-k", type=int, default=10, help="neighbours for mutual-kNN")
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--quiet", action="store_true", help="no progress on stderr")
    s.set_defaults(func=_cmd_compare)

    s = sub.add_parser("conformity", help="per-item conformity as CSV")
    s.add_argument("name")
    s.add_argument("--modality", choices=("image", "text"), default="image")
    s.add_argument("--csv", action="store_true", help="CSV output (the only format)")
    s.set_defaults(func=_cmd_conformity)

    s = sub.add_parser("embed", help="embed a folder of images + captions (raw, float32)")
    s.add_argument("name")
    s.add_argument("--images", help="folder of images")
    s.add_argument("--captions", help="CSV/TSV/JSONL with columns image, caption [, label]")
    s.add_argument("--zip", help="one zip with the same layout (instead of --images)")
    s.add_argument("--webdataset", metavar="SHARDS",
                   help="WebDataset tar shards as img2dataset writes them (jpg/png + txt "
                        "per key), e.g. 'shards/{00000..00099}.tar' (quoted), or a folder")
    _add_job_args(s)
    _add_engine_args(s)
    s.set_defaults(func=_cmd_embed)

    s = sub.add_parser("coco", help="embed MS-COCO (captions JSON + image folder)")
    s.add_argument("name")
    s.add_argument("--annotations", required=True, help="captions_val2017.json")
    s.add_argument("--images", required=True, help="folder with the COCO images")
    s.add_argument("--limit", type=int, default=None, help="first N images, all captions")
    _add_job_args(s)
    _add_engine_args(s)
    s.set_defaults(func=_cmd_coco)

    s = sub.add_parser("fetch-coco", help="download COCO captions + the first N images")
    s.add_argument("dir")
    s.add_argument("--split", default="val2017")
    s.add_argument("--limit", type=int, default=None)
    s.add_argument("--annotations-url", default=None, help=argparse.SUPPRESS)
    s.add_argument("--images-url", default=None, help=argparse.SUPPRESS)
    s.set_defaults(func=_cmd_fetch_coco)

    s = sub.add_parser("index", help="build the FAISS indexes of a dataset")
    s.add_argument("name")
    s.add_argument("--modality", choices=("image", "text", "both"), default="both")
    s.add_argument("--force", action="store_true", help="rebuild even if up to date")
    s.set_defaults(func=_cmd_index)

    s = sub.add_parser("search", help="nearest neighbours by text, image file or item")
    s.add_argument("name")
    q = s.add_mutually_exclusive_group(required=True)
    q.add_argument("--text", help="free text, embedded with the dataset's model")
    q.add_argument("--image", help="an image file, embedded with the dataset's model")
    q.add_argument("--item", type=int, help="row number of an item of the dataset")
    s.add_argument("--item-modality", choices=("image", "text"), default="image")
    s.add_argument("--target", choices=("image", "text"), default=None,
                   help="modality to search (default: image for text queries, "
                        "text for image queries, the same as the item's for --item)")
    s.add_argument("-k", type=int, default=10)
    s.add_argument("--device", default=None)
    s.add_argument("--json", action="store_true")
    s.set_defaults(func=_cmd_search)

    demo = sub.add_parser("demo", help="the bundled demo: train, build, or MS-COCO")
    dsub = demo.add_subparsers(dest="demo_command", required=True)
    s = dsub.add_parser("train", help="train the demo CLIP on the generated world (CPU)")
    s.add_argument("--out", default="assets/demo-model")
    s.add_argument("--steps", type=int, default=None)
    s.set_defaults(func=_cmd_demo_train)
    s = dsub.add_parser("build", help="embed the demo dataset with the demo model")
    s.add_argument("--model-dir", default="assets/demo-model")
    s.add_argument("--out", default="assets/demo")
    s.add_argument("--n", type=int, default=3000)
    s.set_defaults(func=_cmd_demo_build)
    s = dsub.add_parser("coco", help="download MS-COCO val2017 captions + images and embed "
                                     "them (needs internet)")
    s.add_argument("--name", default="coco")
    s.add_argument("--dir", default=None, help="download folder (default ./coco)")
    s.add_argument("--split", default="val2017")
    s.add_argument("--limit", type=int, default=5000)
    s.add_argument("--annotations-url", default=None, help=argparse.SUPPRESS)
    s.add_argument("--images-url", default=None, help=argparse.SUPPRESS)
    _add_job_args(s)
    s.set_defaults(func=_cmd_demo_coco, pretrained="openai")

    s = sub.add_parser("verify", help="re-hash every file of datasets against their manifests")
    s.add_argument("names", nargs="*", help="dataset names (default: all)")
    s.set_defaults(func=_cmd_verify)

    s = sub.add_parser("delete", help="delete a user dataset")
    s.add_argument("name")
    s.set_defaults(func=_cmd_delete)

    jobs = sub.add_parser("jobs", help="background jobs (uploads from the dashboard): "
                                       "list, cancel, resume, log")
    jobs.set_defaults(func=_cmd_jobs, jobs_command=None, json=False)
    jsub = jobs.add_subparsers(dest="jobs_command")
    s = jsub.add_parser("list", help="every job, newest first")
    s.add_argument("--json", action="store_true")
    for verb, text in (("cancel", "stop a job and mark it cancelled"),
                       ("resume", "restart an interrupted job from its finished chunks")):
        jsub.add_parser(verb, help=text).add_argument("id")
    s = jsub.add_parser("log", help="the end of a job's log")
    s.add_argument("id")
    s.add_argument("-n", "--lines", type=int, default=40)
    s = jsub.add_parser("run")           # the worker itself (started by the job runner)
    s.add_argument("id")
    s.add_argument("--attempt", type=int, required=True)
    return p


def os_error_message(exc: OSError) -> str:
    """One line for an OSError: what the system said and the path it was about."""
    what = exc.strerror or (errno.errorcode.get(exc.errno) if exc.errno else None) \
        or str(exc) or type(exc).__name__
    paths = [str(p) for p in (exc.filename, exc.filename2) if p is not None]
    hint = ""
    if exc.errno in (errno.EROFS, errno.EACCES, errno.EPERM):
        hint = (" Check that CLIPGEOM_HOME (or the output folder) is writable, or "
                "point CLIPGEOM_HOME at a writable folder.")
    elif exc.errno in (errno.ENOSPC, errno.EDQUOT):
        hint = " Free some disk space (or point CLIPGEOM_HOME at a larger disk) and retry."
    return f"{what}: {' -> '.join(paths)}.{hint}" if paths else f"{what}.{hint}"


def _quiet_stdout() -> None:
    """After a broken pipe: send what is left in stdout's buffer nowhere, so the
    interpreter's final flush does not print a second error."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError, AttributeError):  # pragma: no cover - exotic stdout
        pass


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    try:
        rc = args.func(args)
        sys.stdout.flush()  # a broken pipe surfaces here, inside the handler
        return rc
    except BrokenPipeError:
        # The reader (e.g. `| head`) stopped reading: not an error of ours.
        _quiet_stdout()
        return 141  # 128 + SIGPIPE, what the shell reports for a killed writer
    except ClipgeomError as exc:
        print(f"clipgeom: error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        # Read-only home, full disk, permissions: the system's words and the path,
        # never a traceback.
        print(f"clipgeom: error: {os_error_message(exc)}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("clipgeom: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
