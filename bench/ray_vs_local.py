"""The Ray engine's overhead on one machine: images/s of the local engine vs Ray local.

    nice -n 15 python bench/ray_vs_local.py [--n 512] [--repeat 2] [--cpus N]

The same ``--n`` generated scenes of the demo world (PNG files + captions.csv,
the image-folder form) embedded with the bundled demo model (config +
checkpoint) into a fresh CLIPGEOM_HOME, by clipgeom.job (the local engine:
DataLoader decoding workers + one torch process) and by clipgeom.ray_engine
on a local Ray started here with ``--cpus`` CPUs (decoding tasks + one CPU
model actor per two CPUs). Timed: the whole job (decode, embed images and
captions, write the dataset; no FAISS index), Ray's start-up separately.
The overhead ratio is Ray's job time over the local engine's (best runs);
the arrays are checked equal to 1e-5 so both engines did the same work.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np

from _common import JSON_TAG, ROOT, loadavg, parser, repeat_timed


def _write_folder(folder: Path, n: int, seed: int) -> tuple[Path, Path]:
    from clipgeom.demo import world

    w = world.generate(n, seed=seed)
    images = folder / "images"
    images.mkdir(parents=True)
    rows = ["image,caption"]
    for i in range(n):
        w.image(i).save(images / f"scene{i:05d}.png")
        rows.append(f"scene{i:05d}.png,\"{w.captions[i]}\"")
    caps = folder / "captions.csv"
    caps.write_text("\n".join(rows) + "\n")
    return images, caps


def main() -> None:
    ap = parser(__doc__.splitlines()[0], n=512, repeat=2)
    ap.add_argument("--cpus", type=int, default=os.cpu_count() or 2,
                    help="CPUs of the local Ray (default: all)")
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="clipgeom-ray-bench-"))
    os.environ["CLIPGEOM_HOME"] = str(work / "home")
    try:
        import ray

        from clipgeom import embed, ingest, job, ray_engine

        images, caps = _write_folder(work, args.n, args.seed)
        spec = embed.ModelSpec(str(ROOT / "assets/demo-model/demo-clip.json"),
                               checkpoint=str(ROOT / "assets/demo-model/demo-clip.pt"))
        opts = job.JobOptions(build_index=False, overwrite=True)
        print(f"{args.n} scenes (PNG + captions.csv), demo model; load average {loadavg()}",
              flush=True)
        local_t, local = repeat_timed(
            lambda: job.run("local", ingest.from_folder(images, caps), spec, opts),
            args.repeat, "local engine")
        t0 = time.perf_counter()
        ray.init(num_cpus=args.cpus, include_dashboard=False, log_to_driver=False)
        ray_start = time.perf_counter() - t0
        print(f"  local Ray started in {ray_start:.1f} s ({args.cpus} CPUs)", flush=True)
        try:
            ray_t, viaray = repeat_timed(
                lambda: ray_engine.run("viaray", ingest.from_folder(images, caps), spec, opts),
                args.repeat, "ray engine")
        finally:
            ray.shutdown()
        d_img = float(np.abs(np.asarray(local.image_emb) - np.asarray(viaray.image_emb)).max())
        d_txt = float(np.abs(np.asarray(local.text_emb) - np.asarray(viaray.text_emb)).max())
        assert d_img < 1e-5 and d_txt < 1e-5, (d_img, d_txt)
        n = local.n_images
        ratio = ray_t.best / local_t.best
        print(f"local engine: {local_t.summary()}  -> {n / local_t.best:.1f} images/s (best)")
        print(f"ray engine:   {ray_t.summary()}  -> {n / ray_t.best:.1f} images/s (best), "
              f"plus {ray_start:.1f} s to start Ray")
        print(f"overhead ratio (ray / local, best job times): {ratio:.2f}x; "
              f"arrays equal to {max(d_img, d_txt):.1e}; load average {loadavg()}")
        summary = {"bench": "ray_vs_local", "n": n, "cpus": args.cpus,
                   "local_s": local_t.as_dict(), "ray_s": ray_t.as_dict(),
                   "ray_start_s": round(ray_start, 2),
                   "local_images_per_s": round(n / local_t.best, 1),
                   "ray_images_per_s": round(n / ray_t.best, 1),
                   "overhead_ratio": round(ratio, 2), "max_abs_diff": max(d_img, d_txt),
                   "workers_local": embed.default_workers(),
                   "ray_embedding": viaray.manifest["embedding"]}
        print(JSON_TAG + json.dumps(summary))
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
