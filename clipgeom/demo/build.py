"""Build the bundled demo dataset from the trained demo model.

The demo is ~3,000 pairs of the generated world (a seed of its own, so
neither the training nor the held-out world), embedded through the same
pipeline a user's images go through (folder + captions file -> ItemList ->
embedding job with ``--checkpoint``), plus the world's metadata (concept
frequencies), the training snapshots and exact FAISS indexes, written
read-only to ``assets/demo/``.

The comparison models (``TrainConfig.loss`` "siglip" and "euclid") embed
the same 3,000 items into ``assets/demo-siglip`` and ``assets/demo-euclip``
(:data:`VARIANTS`): row-aligned with the demo, sharing its thumbnails
(manifest ``thumbs_from``), without snapshots or shipped indexes, so the
three fit the assets' size budget.
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


#: dataset name -> (model folder, training objective) of the comparison models
VARIANTS = {"demo-siglip": (ASSETS / "demo-siglip-model", "siglip"),
            "demo-euclip": (ASSETS / "demo-euclip-model", "euclid")}


def _training_log(model_dir: Path) -> dict:
    import json
    log = model_dir / "training.json"
    return json.loads(log.read_text()) if log.exists() else {}


def model_arch(model_dir: Path = MODEL_DIR) -> str:
    """The architecture (config stem) a model folder holds: ``ARCH.json`` + ``ARCH.pt``."""
    return _training_log(model_dir).get("arch") or train.ARCH


def model_spec(model_dir: Path = MODEL_DIR) -> embed.ModelSpec:
    arch = model_arch(model_dir)
    return embed.ModelSpec(str(model_dir / f"{arch}.json"),
                           checkpoint=str(model_dir / f"{arch}.pt"))


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
    curve = _training_log(model_dir).get("curve", [])
    return [{"step": c["step"], "eval": c["eval"]} for c in curve if "eval" in c]


def _root_relative(path: Path) -> str:
    """``assets/...`` for files inside the project (how manifests record bundled files)."""
    try:
        return str(path.resolve().relative_to(ASSETS.parent))
    except ValueError:
        return str(path)


def build_demo(model_dir: Path = MODEL_DIR, out_dir: Path = DEMO_DIR, n: int = 3000,
               seed: int = DEMO_SEED, progress: Optional[Callable] = None, *,
               snapshots: bool = True, thumbs_from: Optional[str] = None,
               ship_index: bool = True) -> Path:
    """Embed ``n`` world pairs with the model in ``model_dir`` into ``out_dir``
    (replaced whole). ``snapshots``: ship the training snapshots;
    ``thumbs_from``: a bundled dataset of the same images whose thumbnails
    this one shares (none are copied); ``ship_index``: ship exact FAISS indexes."""
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
        extras = {}
        if snapshots:
            snaps = np.load(model_dir / "snapshots.npz", allow_pickle=False)
            extras["snapshot_steps"] = snaps["steps"]
            for s in snaps["steps"]:
                extras[f"snapshot_image_{int(s)}"] = snaps[f"image_{int(s)}"]
                extras[f"snapshot_text_{int(s)}"] = snaps[f"text_{int(s)}"]
        log = _training_log(model_dir)
        objective = (log.get("config") or {}).get("loss", "clip")
        arch = model_arch(model_dir)
        model = {"name": arch, "pretrained": None,
                 "config": _root_relative(model_dir / f"{arch}.json"),
                 "checkpoint": _root_relative(model_dir / f"{arch}.pt"),
                 "checkpoint_sha256": embed.file_sha256(model_dir / f"{arch}.pt"),
                 "objective": objective,
                 "temperature": ds.manifest["model"].get("temperature")}
        if objective == "euclid":
            # Its logit scale s multiplies -||x - y||^2, not a cosine: no softmax
            # temperature of cosine logits is the model's own (analyses use CLIP's 0.01).
            model["logits"] = "neg_sq_distance"
            model["logit_scale"] = 1.0 / model.pop("temperature")
        extra_manifest = {k: v for k, v in ds.manifest.items()
                          if k in ("skipped", "embedding")}
        extra_manifest["demo"] = {
            "world_seed": seed, "objective": objective,
            "quality": log.get("final"),
            "frequency_columns": ["concept_frequency", "main_concept_frequency",
                                  "shape_frequency", "colour_frequency"]}
        if snapshots:
            extra_manifest["demo"].update({
                "snapshot_heldout": "the demo model's held-out world "
                "(seed 2, 1,000 pairs), embedded at each snapshot step",
                "snapshot_quality": _snapshot_quality(model_dir),
                # pair i of every snapshot: its caption, for hover text (~40 KB)
                "snapshot_captions": list(train.heldout_world(train.TrainConfig()).captions)})
        if thumbs_from:
            extra_manifest["thumbs_from"] = thumbs_from
        final = store.create_dataset(
            "demo-build", np.asarray(ds.image_emb), np.asarray(ds.text_emb), ds.images,
            ds.texts, model=model, source={"kind": "demo", "generator": "clipgeom.demo.world",
                                           "seed": seed, "n": n},
            extra_manifest=extra_manifest, thumbs_dir=ds.path / "thumbs",
            extra_arrays=extras or None, home=tmp / "home")
        staged = out_dir.with_name(out_dir.name + ".new")
        shutil.rmtree(staged, ignore_errors=True)
        shutil.copytree(final.path, staged, ignore=shutil.ignore_patterns(".readers"))
        shutil.rmtree(staged / "cache", ignore_errors=True)   # thumbnails' cache etc.
        # FAISS indexes ship with the demo (exact, ~0.8 MB each); the index
        # metadata holds the fingerprint, which does not depend on the name.
        shutil.rmtree(staged / "index", ignore_errors=True)
        if thumbs_from:
            shutil.rmtree(staged / "thumbs", ignore_errors=True)
        if ship_index:
            for modality in ("image", "text"):
                index.build_index(final, modality)
            shutil.copytree(final.path / "index", staged / "index")
        # ... and so does the report the Home page opens with (the model's own τ),
        # so a fresh install shows its first page at once
        shutil.rmtree(final.path / "cache", ignore_errors=True)
        report.stored_report(final, temperature=report.default_temperature(final))
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


def build_variant(name: str, progress: Optional[Callable] = None) -> Path:
    """Build one comparison dataset of :data:`VARIANTS` (same items as the demo)."""
    model_dir, _ = VARIANTS[name]
    return build_demo(model_dir, ASSETS / name, progress=progress, snapshots=False,
                      thumbs_from=DEMO_DIR.name, ship_index=False)
