"""ViT-B-32 images/s on a GPU with the Ray engine (vs the local engine on the same GPU).

    python bench/gpu_ray_check.py [--n 20000] [--shards 20] [--batch-size 256]
    python bench/gpu_ray_check.py --n 64 --shards 2 --gpus-per-worker 0   # CPU smoke run

Writes ``--n`` generated demo-world scenes (256 px JPEG, as img2dataset
stores them) into ``--shards`` WebDataset tars, then embeds them with
open_clip ViT-B-32 with random weights (``pretrained=None``, saved once as a
checkpoint so both engines use the same; nothing to download; the cost of a
forward pass does not depend on the weights) by

* the Ray engine on a local Ray holding every CPU and GPU of the machine
  (decoding in CPU tasks, one model actor per ``--gpus-per-worker`` GPUs,
  bf16 autocast as the local engine uses on CUDA), reading the shards with
  Ray Data's ``read_webdataset``;
* the local engine on the same shards (tarfile, DataLoader workers, one GPU).

Prints the job wall time and images/s of each, Ray's steady rate (between
the first and the last finished shard, i.e. without actor start-up and
model loading), and the largest relative difference between the engines'
arrays. Reference: clip-retrieval reports ~2,500 images/s per A100 for
ViT-B-32 inference including decoding. Needs a machine with a GPU; not run
in CI.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import shutil
import tarfile
import tempfile
import time
from pathlib import Path

import numpy as np

from _common import JSON_TAG, loadavg


def _write_shards(folder: Path, n: int, shards: int, size: int) -> str:
    from clipgeom.demo import world

    w = world.generate(n, seed=0, image_size=size)
    folder.mkdir(parents=True)
    per = -(-n // shards)
    for s in range(shards):
        with tarfile.open(folder / f"{s:05d}.tar", "w") as tf:
            for i in range(s * per, min(n, (s + 1) * per)):
                for name, data in ((f"{i:09d}.jpg", _jpeg(w.image(i))),
                                   (f"{i:09d}.txt", w.captions[i].encode())):
                    info = tarfile.TarInfo(name)
                    info.size = len(data)
                    tf.addfile(info, io.BytesIO(data))
    return str(folder / f"{{00000..{shards - 1:05d}}}.tar")


def _jpeg(img) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=90)
    return buf.getvalue()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=20_000)
    ap.add_argument("--shards", type=int, default=20)
    ap.add_argument("--size", type=int, default=256, help="scene side in pixels")
    ap.add_argument("--model", default="ViT-B-32")
    ap.add_argument("--batch-size", type=int, default=256)
    ap.add_argument("--gpus-per-worker", type=float, default=1.0)
    ap.add_argument("--workers", type=int, default=None, help="model actors")
    ap.add_argument("--skip-local", action="store_true", help="time the Ray engine only")
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="clipgeom-gpu-ray-"))
    os.environ["CLIPGEOM_HOME"] = str(work / "home")
    try:
        import ray
        import torch

        from clipgeom import embed, job, ray_engine, webdataset

        t0 = time.perf_counter()
        pattern = _write_shards(work / "shards", args.n, args.shards, args.size)
        print(f"{args.n} scenes in {args.shards} shards written in "
              f"{time.perf_counter() - t0:.0f} s; GPUs: {torch.cuda.device_count()}; "
              f"CPUs: {os.cpu_count()}; load average {loadavg()}", flush=True)
        # Random weights (pretrained=None), saved once so that both engines and
        # every actor load the same ones.
        torch.manual_seed(0)
        weights = work / "random-weights.pt"
        torch.save(embed.load_model(embed.ModelSpec(args.model), "cpu").model.state_dict(),
                   weights)
        spec = embed.ModelSpec(args.model, checkpoint=str(weights))
        device = "cuda" if args.gpus_per_worker > 0 else "cpu"
        opts = job.JobOptions(batch_size=args.batch_size, build_index=False, overwrite=True,
                              device=device)
        shards = webdataset.Shards.of(pattern)

        finished = []

        def progress(stage, done, total):
            if stage.startswith("samples") and done:
                finished.append(time.perf_counter())
        t0 = time.perf_counter()
        ray.init(include_dashboard=False, log_to_driver=False)
        ray_start = time.perf_counter() - t0
        print(f"Ray started in {ray_start:.1f} s: {ray.cluster_resources()}", flush=True)
        try:
            t0 = time.perf_counter()
            viaray = ray_engine.run("viaray", shards, spec, opts,
                                    ray_engine.RayOptions(gpus_per_worker=args.gpus_per_worker,
                                                          workers=args.workers),
                                    progress=progress)
            ray_s = time.perf_counter() - t0
        finally:
            ray.shutdown()
        n = viaray.n_images
        per_shard = n / args.shards
        # Shards finish in order as the stream passes them; with a few shards
        # they all finish at the end and no steady rate can be read.
        steady = ((len(finished) - 1) * per_shard / (finished[-1] - finished[0])
                  if len(finished) >= 4 and finished[-1] > finished[0] else float("nan"))
        out = {"bench": "gpu_ray_check", "model": args.model, "n": n, "shards": args.shards,
               "batch_size": args.batch_size, "ray_start_s": round(ray_start, 1),
               "ray_job_s": round(ray_s, 1), "ray_images_per_s": round(n / ray_s, 1),
               "ray_steady_images_per_s": round(steady, 1),
               "embedding": viaray.manifest["embedding"]}
        print(f"ray engine:   {ray_s:.1f} s -> {n / ray_s:,.0f} images/s for the whole job; "
              f"steady {steady:,.0f} images/s between the first and last shard "
              f"(clip-retrieval: ~2,500/s per A100)", flush=True)
        if not args.skip_local:
            t0 = time.perf_counter()
            work_dir = work / "extract"
            items = webdataset.from_webdataset(shards, work_dir)
            local = job.run("local", items, spec, opts)
            local_s = time.perf_counter() - t0
            a, b = np.asarray(local.image_emb), np.asarray(viaray.image_emb)
            rel = float(np.abs(a - b).max() / np.abs(a).max())
            out.update(local_job_s=round(local_s, 1),
                       local_images_per_s=round(local.n_images / local_s, 1),
                       max_rel_diff_local_vs_ray=rel)
            print(f"local engine: {local_s:.1f} s -> {local.n_images / local_s:,.0f} images/s "
                  f"(tar extraction included); max |local - ray| / max |local| = {rel:.1e}")
        print(JSON_TAG + json.dumps(out))
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
