"""Build the bundled demo dataset from the trained demo model.

The demo is ~3,000 pairs of the generated world (a seed of its own, so
neither the training nor the held-out world), embedded through the same
pipeline a user's images go through (folder + captions file -> ItemList ->
embedding job with ``--checkpoint``), plus the world's metadata (concept
frequencies), the training snapshots and exact FAISS indexes, written
read-only to ``assets/demo/``.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path
from typing import Callable, Optional

import numpy as np
import pandas as pd

from .. import embed, index, ingest, job, report, store
from . import train
from . import world as W

ASSETS = Path(__file__).resolve().parent.parent.parent / "assets"
MODEL_DIR = ASSETS / "demo-model"
DEMO_DIR = ASSETS / "demo"
DEMO_SEED = 3


def model_spec(model_dir: Path = MODEL_DIR) -> embed.ModelSpec:
    return embed.ModelSpec(str(model_dir / "demo-clip.json"),
                           checkpoint=str(model_dir / "demo-clip.pt"))


def write_world_folder(world: "W.World", folder: Path) -> Path:
    """PNG images + captions.csv (with the world's text metadata) in ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(len(world)):
        world.image(i).save(folder / f"scene_{i:05d}.png")
    tm = world.texts_meta
    caps = pd.DataFrame({
        "image": [f"scene_{int(world.caption_image[r]):05d}.png" for r in range(len(tm))],
        "caption": tm["caption"],
        "level": tm["level"], "odd": tm["odd"],
        "caption_frequency": tm["caption_frequency"]})
    path = folder / "captions.csv"
    caps.to_csv(path, index=False)
    return path


def _snapshot_quality(model_dir: Path) -> list[dict]:
    """The held-out quality at each snapshot step, from the training log."""
    import json
    log = model_dir / "training.json"
    if not log.exists():
        return []
    curve = json.loads(log.read_text()).get("curve", [])
    return [{"step": c["step"], "eval": c["eval"]} for c in curve if "eval" in c]


def build_demo(model_dir: Path = MODEL_DIR, out_dir: Path = DEMO_DIR, n: int = 3000,
               seed: int = DEMO_SEED, progress: Optional[Callable] = None) -> Path:
    """Embed ``n`` world pairs with the demo model into ``out_dir`` (replaced whole)."""
    world = W.generate(n, seed=seed, captions_per_image=1)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        caps = write_world_folder(world, tmp / "world")
        items = ingest.from_folder(tmp / "world", caps)
        meta = world.images_meta.copy()
        meta["source"] = [f"scene_{i:05d}.png" for i in range(len(meta))]
        keep = [c for c in meta.columns if c not in ("image_id",)]
        items.images = items.images.merge(meta[keep], on="source", how="left")
        spec = model_spec(model_dir)
        ds = job.run("demo-embed", items, spec, job.JobOptions(workers=0, build_index=False),
                     progress=progress, home=tmp / "home")
        snaps = np.load(model_dir / "snapshots.npz", allow_pickle=False)
        extras = {"snapshot_steps": snaps["steps"]}
        for s in snaps["steps"]:
            extras[f"snapshot_image_{int(s)}"] = snaps[f"image_{int(s)}"]
            extras[f"snapshot_text_{int(s)}"] = snaps[f"text_{int(s)}"]
        model = {"name": "demo-clip", "pretrained": None,
                 "config": "assets/demo-model/demo-clip.json",
                 "checkpoint": "assets/demo-model/demo-clip.pt",
                 "checkpoint_sha256": embed.file_sha256(model_dir / "demo-clip.pt"),
                 "temperature": ds.manifest["model"].get("temperature")}
        extra_manifest = {k: v for k, v in ds.manifest.items()
                          if k in ("skipped", "embedding")}
        extra_manifest["demo"] = {
            "world_seed": seed, "snapshot_heldout": "the demo model's held-out world "
            "(seed 2, 1,000 pairs), embedded at each snapshot step",
            "frequency_columns": ["concept_frequency", "main_concept_frequency",
                                  "shape_frequency", "colour_frequency"],
            "snapshot_quality": _snapshot_quality(model_dir),
            # pair i of every snapshot: its caption, for hover text (~40 KB)
            "snapshot_captions": list(train.heldout_world(train.TrainConfig()).captions)}
        final = store.create_dataset(
            "demo-build", np.asarray(ds.image_emb), np.asarray(ds.text_emb), ds.images,
            ds.texts, model=model, source={"kind": "demo", "generator": "clipgeom.demo.world",
                                           "seed": seed, "n": n},
            extra_manifest=extra_manifest, thumbs_dir=ds.path / "thumbs",
            extra_arrays=extras, home=tmp / "home")
        staged = out_dir.with_name(out_dir.name + ".new")
        shutil.rmtree(staged, ignore_errors=True)
        shutil.copytree(final.path, staged, ignore=shutil.ignore_patterns(".readers"))
        shutil.rmtree(staged / "cache", ignore_errors=True)   # thumbnails' cache etc.
        # FAISS indexes ship with the demo (exact, ~0.8 MB each); the index
        # metadata holds the fingerprint, which does not depend on the name.
        shutil.rmtree(staged / "index", ignore_errors=True)
        for modality in ("image", "text"):
            index.build_index(final, modality)
        shutil.copytree(final.path / "index", staged / "index")
        # ... and so does the report the Home page opens with (the model's own τ),
        # so a fresh install shows its first page at once
        shutil.rmtree(final.path / "cache", ignore_errors=True)
        report.stored_report(final, temperature=model["temperature"])
        shutil.copytree(final.path / "cache", staged / "cache")
        # the manifest's name must be the folder's
        import json
        m = json.loads((staged / "manifest.json").read_text())
        m["name"] = out_dir.name
        (staged / "manifest.json").write_text(json.dumps(m, indent=1))
        if out_dir.exists():
            shutil.rmtree(out_dir)
        staged.rename(out_dir)
    if out_dir.parent.resolve() == Path(store.ASSETS_DIR).resolve():
        from .ship_umap import ship_umap     # the Projections page's default UMAP ships too
        ship_umap(out_dir.name)
    return out_dir
