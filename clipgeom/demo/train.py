"""Train the demo CLIP on the generated world, from scratch, on CPU.

``python -m clipgeom demo train`` reproduces the shipped model: an open_clip
CLIP with the small custom config ``demo-clip.json`` (vision: open_clip's
ModifiedResNet, as in CLIP RN50 but layers [1, 1, 1, 1] and width 16, 64 px,
attention pooling; text transformer: width 64, 3 layers, context 32;
embed_dim 64), trained with open_clip's ``ClipLoss`` and a learnable logit
scale, seeded: batch 256, 2,000 steps, AdamW lr 1e-3 with 150 warm-up steps
and a cosine decay, on 30,000 generated scenes with 3 captions each whose
detail levels lean to the detailed end (``TRAIN_LEVEL_PROBS``).

The recipe was chosen by ``bench/demo_recipe_sweep.py`` (figures in
docs/benchmarks.md): a ViT tower of the same cost learnt shapes far more slowly
(truth-based i2t 0.22 after 1,500 steps vs 0.55 for the ResNet), batch 256
beat 128 at equal steps, and dropping the all-generic "a shape" captions from
training removed false negatives (0.71 -> 0.76). Raw embeddings of a fixed held-out set are recorded at a few
steps (step 0 = random initialisation included) so the dashboard can show
the geometry forming.

The same recipe trains the two comparison models (``TrainConfig.loss``):

* ``"siglip"``: SigLIP's pairwise sigmoid loss (Zhai et al. 2023; open_clip's
  ``SigLipLoss``) on L2-normalised features, with a learnable logit scale and
  bias initialised as in SigLIP (scale 10, bias -10; ``demo-sigmoid.json``: open_clip
  gives any architecture named *siglip* SigLIP's own tokenizer).
* ``"euclid"``: EuCLIP (Chou & Alam 2024, "Embedding Geometries of
  Contrastive Language-Image Pre-Training"): the softmax cross-entropy of CLIP
  with logits ``-s * ||x - y||^2`` on the *unnormalised* features (their
  distance-squared logit, no final normalisation, no entailment loss), with a
  learnable scale ``s`` (``demo-euclip.json``).

Towers, data, batch, steps, optimiser and seeds are those of the CLIP model,
so the three are row-aligned and differ only in the training objective.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Optional

import numpy as np
import torch

from . import world as W

CONFIG = Path(__file__).with_name("demo-clip.json")
ARCH = "demo-clip"
#: training objective -> its open_clip model config (the architecture's name is the stem)
LOSS_CONFIGS = {"clip": CONFIG, "siglip": CONFIG.with_name("demo-sigmoid.json"),
                "euclid": CONFIG.with_name("demo-euclip.json")}
#: how each objective scores a pair at retrieval time (its own logits)
SCORES = {"clip": "cosine", "siglip": "cosine", "euclid": "euclid"}
MEAN = (0.48145466, 0.4578275, 0.40821073)     # open_clip's (OpenAI) normalisation
STD = (0.26862954, 0.26130258, 0.27577711)


# Detail levels 0..6 of the training captions (the world's default weighs
# level 0, "a shape", at 5 %: near-universal captions are false negatives for
# the contrastive loss). Held-out and demo captions keep the world's default.
TRAIN_LEVEL_PROBS = (0.0, 0.05, 0.2, 0.25, 0.2, 0.15, 0.15)


@dataclass
class TrainConfig:
    steps: int = 2000
    batch_size: int = 256
    lr: float = 1e-3
    weight_decay: float = 0.1
    warmup: int = 150
    n_train: int = 30000
    captions_per_image: int = 3
    n_heldout: int = 1000
    seed: int = 0
    train_seed: int = 1          # world seeds: train and held-out worlds differ
    heldout_seed: int = 2
    snapshot_steps: list = field(default_factory=lambda: [0, 50, 150, 400, 1000, -1])
    threads: Optional[int] = None
    loss: str = "clip"                # "clip" | "siglip" | "euclid" (see the module doc)
    config_path: Optional[str] = None  # an open_clip model config JSON; None: LOSS_CONFIGS[loss]
    image_size: int = 64
    beta2: float = 0.98               # AdamW betas/eps as in open_clip's training
    eps: float = 1e-6
    init_logit_scale: Optional[float] = None   # exp-scale; None keeps open_clip's 1/0.07
    train_level_probs: Optional[tuple] = TRAIN_LEVEL_PROBS  # None: the world's default
    device: str = "cpu"               # experiments only; the shipped model trains on CPU


def model_config(cfg: TrainConfig) -> Path:
    if cfg.loss not in LOSS_CONFIGS:
        raise ValueError(f"unknown loss {cfg.loss!r}; one of {sorted(LOSS_CONFIGS)}")
    return Path(cfg.config_path) if cfg.config_path else LOSS_CONFIGS[cfg.loss]


def euclidean_logits(image_features, text_features, scale):
    """EuCLIP's distance-squared logits, -s ||x_i - y_j||^2 (Chou & Alam 2024)."""
    sq = (image_features.pow(2).sum(1, keepdim=True) + text_features.pow(2).sum(1)
          - 2.0 * image_features @ text_features.T)
    return -scale * sq


def objective(loss: str):
    """``f(model, pixels, tokens) -> loss`` for one training objective."""
    import open_clip
    import torch.nn.functional as F

    if loss == "clip":
        clip_loss = open_clip.ClipLoss()
        return lambda m, px, tok: clip_loss(m.encode_image(px, normalize=True),
                                            m.encode_text(tok, normalize=True),
                                            m.logit_scale.exp())
    if loss == "siglip":
        sig_loss = open_clip.loss.SigLipLoss()
        return lambda m, px, tok: sig_loss(m.encode_image(px, normalize=True),
                                           m.encode_text(tok, normalize=True),
                                           m.logit_scale.exp(), m.logit_bias)

    def euclid(m, px, tok):
        logits = euclidean_logits(m.encode_image(px, normalize=False),
                                  m.encode_text(tok, normalize=False), m.logit_scale.exp())
        labels = torch.arange(len(logits), device=logits.device)
        return 0.5 * (F.cross_entropy(logits, labels) + F.cross_entropy(logits.T, labels))
    return euclid


def build_model(config_path=CONFIG):
    import open_clip

    config_path = Path(config_path)
    open_clip.add_model_config(config_path)
    model = open_clip.create_model(config_path.stem, pretrained=None)
    tokenizer = open_clip.get_tokenizer(config_path.stem)
    return model, tokenizer


def to_pixels(images_u8) -> torch.Tensor:
    """uint8 [B, H, W, 3] (array or tensor) -> normalised float [B, 3, H, W]
    (open_clip's preprocessing of a 64 px image: resize and crop are the identity)."""
    x = torch.as_tensor(images_u8).permute(0, 3, 1, 2).float().div_(255.0)
    mean = torch.tensor(MEAN, device=x.device).view(1, 3, 1, 1)
    std = torch.tensor(STD, device=x.device).view(1, 3, 1, 1)
    return (x - mean) / std


@torch.inference_mode()
def raw_embeddings(model, tokenizer, images_u8: np.ndarray, captions: list[str],
                   batch: int = 256) -> tuple[np.ndarray, np.ndarray]:
    model.eval()
    dev = next(model.parameters()).device
    img, txt = [], []
    for s in range(0, len(captions), batch):
        pixels = to_pixels(torch.from_numpy(images_u8[s:s + batch]).to(dev))
        img.append(model.encode_image(pixels, normalize=False))
        txt.append(model.encode_text(tokenizer(captions[s:s + batch]).to(dev), normalize=False))
    return (torch.cat(img).float().cpu().numpy(), torch.cat(txt).float().cpu().numpy())


def evaluate(image_emb: np.ndarray, text_emb: np.ndarray, world: "W.World",
             caption_rows: np.ndarray, score: str = "cosine") -> dict:
    """Quality on held-out pairs, judged by the world's own truth.

    ``caption_true_i2t``: share of images whose best-scoring caption (among
    all held-out captions) is true of the image; ``image_true_t2i``: share of
    (non-odd) captions whose best-scoring image satisfies them; exact-caption
    recall@1/@5: the image's own caption ranks first / in the top 5. Scores are
    the model's own: cosine, or ``score="euclid"``: -||x - y||^2 on raw features.
    """
    if score == "euclid":
        x, y = image_emb.astype(np.float64), text_emb.astype(np.float64)
        sim = -((x * x).sum(1)[:, None] + (y * y).sum(1)[None] - 2 * x @ y.T)
    else:
        u = image_emb / np.linalg.norm(image_emb, axis=1, keepdims=True)
        t = text_emb / np.linalg.norm(text_emb, axis=1, keepdims=True)
        sim = u @ t.T
    n = len(sim)
    best_caption = sim.argmax(1)
    structs = [world.caption_structs[r] for r in caption_rows]
    odd = np.array([world.odd[r] for r in caption_rows])
    i2t = np.mean([W.caption_is_true(structs[c], world.scenes[i])
                   for i, c in enumerate(best_caption)])
    best_image = sim.argmax(0)
    t2i = np.mean([W.caption_is_true(structs[c], world.scenes[best_image[c]])
                   for c in range(n) if not odd[c]])
    rank = (sim > np.diag(sim)[:, None]).sum(1)
    return {"caption_true_i2t": float(i2t), "image_true_t2i": float(t2i),
            "recall_at_1": float(np.mean(rank < 1)), "recall_at_5": float(np.mean(rank < 5)),
            "n": int(n)}


def heldout_world(cfg: TrainConfig) -> "W.World":
    return W.generate(cfg.n_heldout, seed=cfg.heldout_seed, image_size=cfg.image_size,
                      captions_per_image=1)


def train(cfg: TrainConfig, out_dir: Path, progress: Optional[Callable[[dict], None]] = None
          ) -> dict:
    """Train; write ``out_dir/ARCH.pt`` (fp16 state dict), ``ARCH.json`` (ARCH: the
    model config's stem, e.g. demo-clip), ``snapshots.npz`` and ``training.json``
    (config, loss curve, quality)."""
    config_path = model_config(cfg)
    arch = config_path.stem
    out_dir.mkdir(parents=True, exist_ok=True)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    torch.manual_seed(cfg.seed)
    rng = np.random.default_rng(cfg.seed)
    t0 = time.time()
    world_cfg = W.WorldConfig(level_probs=tuple(cfg.train_level_probs)) \
        if cfg.train_level_probs else None
    train_world = W.generate(cfg.n_train, seed=cfg.train_seed, image_size=cfg.image_size,
                             captions_per_image=cfg.captions_per_image, config=world_cfg)
    dev = torch.device(cfg.device)
    train_images = torch.from_numpy(train_world.images()).to(dev)
    caption_idx = np.asarray(train_world.caption_image)
    by_image = [np.flatnonzero(caption_idx == i) for i in range(cfg.n_train)] \
        if cfg.captions_per_image > 1 else None
    held = heldout_world(cfg)
    held_images = held.images()
    held_rows = np.arange(len(held.captions))
    held_captions = list(held.captions)
    gen_s = time.time() - t0

    model, tokenizer = build_model(config_path)
    if cfg.init_logit_scale:
        model.logit_scale.data.fill_(math.log(cfg.init_logit_scale))
    model.to(dev)
    train_tokens = tokenizer(list(train_world.captions)).to(dev)   # once, not per step
    loss_fn = objective(cfg.loss)
    decay = [p for n, p in model.named_parameters() if p.ndim >= 2 and "logit_scale" not in n]
    no_decay = [p for n, p in model.named_parameters() if p.ndim < 2 or "logit_scale" in n]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": cfg.weight_decay},
                             {"params": no_decay, "weight_decay": 0.0}],
                            lr=cfg.lr, betas=(0.9, cfg.beta2), eps=cfg.eps)

    def lr_at(step):
        if step < cfg.warmup:
            return cfg.lr * (step + 1) / cfg.warmup
        p = (step - cfg.warmup) / max(1, cfg.steps - cfg.warmup)
        return cfg.lr * 0.5 * (1 + math.cos(math.pi * p))

    snap_steps = sorted({cfg.steps if s < 0 else s for s in cfg.snapshot_steps})
    snapshots, curve = {}, []
    for step in range(cfg.steps + 1):
        if step in snap_steps:
            ie, te = raw_embeddings(model, tokenizer, held_images, held_captions)
            snapshots[step] = (ie, te)
            q = evaluate(ie, te, held, held_rows, score=SCORES[cfg.loss])
            curve.append({"step": step, "eval": q, "time_s": time.time() - t0})
            if progress:
                progress({"step": step, "eval": q})
        if step == cfg.steps:
            break
        model.train()
        idx = rng.integers(0, cfg.n_train, cfg.batch_size)
        if by_image is not None:
            rows = [int(rng.choice(by_image[i])) for i in idx]
        else:
            rows = list(idx)
        for g in opt.param_groups:
            g["lr"] = lr_at(step)
        loss = loss_fn(model, to_pixels(train_images[torch.from_numpy(idx).to(dev)]),
                       train_tokens[torch.as_tensor(rows, device=dev)])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        with torch.no_grad():       # as in CLIP: the logit scale is clamped at 100
            # (and at >= 1 for cosine logits; squared distances need a smaller one)
            model.logit_scale.clamp_(None if cfg.loss == "euclid" else 0, math.log(100))
        if step % 50 == 0:
            curve.append({"step": step, "loss": float(loss.detach()), "lr": lr_at(step),
                          "logit_scale": float(model.logit_scale.detach().exp()),
                          "time_s": time.time() - t0})
            if getattr(model, "logit_bias", None) is not None:
                curve[-1]["logit_bias"] = float(model.logit_bias.detach())
            if progress:
                progress(curve[-1])

    state = {k: (v.half() if v.is_floating_point() else v).cpu()
             for k, v in model.state_dict().items()}
    torch.save(state, out_dir / f"{arch}.pt")
    (out_dir / f"{arch}.json").write_text(config_path.read_text())
    np.savez_compressed(out_dir / "snapshots.npz",
                        steps=np.array(sorted(snapshots)),
                        **{f"image_{s}": snapshots[s][0] for s in snapshots},
                        **{f"text_{s}": snapshots[s][1] for s in snapshots})
    final = [c for c in curve if "eval" in c][-1]["eval"]
    summary = {"config": asdict(cfg), "arch": arch, "curve": curve, "final": final,
               "world_generation_s": gen_s, "train_s": time.time() - t0,
               "torch": torch.__version__, "threads": torch.get_num_threads()}
    (out_dir / "training.json").write_text(json.dumps(summary, indent=1))
    return summary


if __name__ == "__main__":   # python -m clipgeom.demo.train OUT ['{"steps": 800, ...}']
    import sys

    overrides = json.loads(sys.argv[2]) if len(sys.argv) > 2 else {}
    cfg = TrainConfig(**overrides)
    res = train(cfg, Path(sys.argv[1]), progress=lambda d: print(json.dumps(d), flush=True))
    print(json.dumps(res["final"]))
