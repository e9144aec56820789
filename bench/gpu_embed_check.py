"""Embed the bundled demo on a GPU and compare with the shipped (CPU) vectors.

    python bench/gpu_embed_check.py [--device cuda] [--n 3000]

Re-renders the demo's scenes (the world is deterministic), embeds images and
captions with the demo checkpoint through clipgeom.embed on the device, and
prints the largest relative difference to the stored raw embeddings, the
cosine between them, and images/s on the device vs the CPU. Run on the GPU
lent to session 2 (figures in docs/benchmarks.md).
"""

import argparse
import time
from pathlib import Path

import numpy as np
import torch

from clipgeom import embed, store
from clipgeom.demo import world as W


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--n", type=int, default=3000)
    args = ap.parse_args()
    ds = store.open_dataset("demo")
    src = ds.manifest["source"]
    world = W.generate(src["n"], seed=src["seed"])
    rows = np.arange(min(args.n, ds.n_images))
    scenes = [int(Path(s).stem.split("_")[1]) for s in ds.images["source"].iloc[rows]]
    spec = embed.spec_from_manifest(ds.manifest["model"], ds.name)
    for device in (args.device, "cpu"):
        lm = embed.load_model(spec, device)
        pix = torch.stack([lm.preprocess(world.image(i).convert("RGB")) for i in scenes])
        embed.encode_image_batch(lm, pix[:64])                    # warm-up
        if lm.device.type == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        got = np.concatenate([embed.encode_image_batch(lm, pix[s:s + 512])
                              for s in range(0, len(pix), 512)])
        if lm.device.type == "cuda":
            torch.cuda.synchronize()
        dt = time.perf_counter() - t0
        txt = embed.encode_texts(lm, ds.texts["caption"].iloc[rows].astype(str).tolist())
        for name, a, b in (("image", got, np.asarray(ds.image_emb)[rows]),
                           ("text", txt, np.asarray(ds.text_emb)[rows])):
            rel = np.abs(a - b).max() / np.abs(b).max()
            cos = np.sum(a * b, 1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))
            print(f"{device:5s} {name:5s}: max |diff| / max |v| = {rel:.2e}, "
                  f"min cos = {cos.min():.6f}, norm ratio = "
                  f"{np.median(np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)):.5f}")
        print(f"{device:5s} images/s: {len(pix) / dt:,.0f} (autocast {lm.autocast_dtype})",
              flush=True)


if __name__ == "__main__":
    main()
