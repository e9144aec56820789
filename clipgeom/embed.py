"""open_clip model loading and RAW (un-normalised) embedding extraction.

Any open_clip architecture by name with a pretrained tag (downloaded through
open_clip's own cache on a machine with internet), a local checkpoint
(``torch.load(..., weights_only=True)`` via open_clip), or a model config
JSON (e.g. the bundled demo model). Embeddings are the encoders' raw output:
``encode_image(x, normalize=False)``; the whole product is about what
normalisation throws away.
"""

from __future__ import annotations

import contextlib
import difflib
import hashlib
import logging
import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import numpy as np
import torch

from .errors import InputError

DEFAULT_BATCH = {"cuda": 256, "mps": 64, "cpu": 32}


@dataclass(frozen=True)
class ModelSpec:
    """Which model embeds a dataset.

    ``name``: an open_clip architecture (``ViT-B-32``) or a path to a model
    config JSON (its file stem becomes the architecture name).
    ``pretrained``: an open_clip tag (``openai``, ``laion2b_s34b_b79k``...).
    ``checkpoint``: a local weights file for that architecture.
    """

    name: str
    pretrained: Optional[str] = None
    checkpoint: Optional[str] = None

    def to_manifest(self) -> dict:
        out: dict = {"name": self.arch, "pretrained": self.pretrained}
        if self.config_path:
            out["config"] = str(self.config_path)
        if self.checkpoint:
            out["checkpoint"] = str(self.checkpoint)
            out["checkpoint_sha256"] = file_sha256(self.checkpoint)
        return out

    @property
    def config_path(self) -> Optional[Path]:
        p = Path(self.name)
        return p if p.suffix == ".json" else None

    @property
    def arch(self) -> str:
        return self.config_path.stem if self.config_path else self.name


def file_sha256(path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def pick_device(requested: Optional[str] = None) -> torch.device:
    """``requested`` if given (validated), else cuda, then mps, then cpu."""
    if requested:
        try:
            dev = torch.device(requested)
        except (RuntimeError, ValueError):
            raise InputError(f"unknown device {requested!r}; use cpu, cuda, cuda:N or mps.") from None
        if dev.type == "cuda" and not torch.cuda.is_available():
            raise InputError("device cuda was requested but no CUDA GPU is available.")
        if dev.type == "mps" and not torch.backends.mps.is_available():
            raise InputError("device mps was requested but Apple MPS is not available.")
        return dev
    if torch.cuda.is_available():
        return torch.device("cuda")
    if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


@dataclass
class LoadedModel:
    model: torch.nn.Module
    preprocess: object
    tokenizer: object
    device: torch.device
    spec: ModelSpec
    context_length: int
    dim: int
    autocast_dtype: Optional[torch.dtype] = None
    notes: list = field(default_factory=list)

    @property
    def default_batch_size(self) -> int:
        return DEFAULT_BATCH.get(self.device.type, 32)

    @property
    def temperature(self) -> Optional[float]:
        """The model's own softmax temperature, 1 / exp(logit_scale) (CLIP: 0.01),
        or None when it has no logit scale."""
        scale = getattr(self.model, "logit_scale", None)
        if scale is None:
            return None
        return float(1.0 / torch.as_tensor(scale).detach().float().exp().reshape(-1)[0])


def _known_arch(name: str) -> None:
    import open_clip

    models = open_clip.list_models()
    if name not in models:
        close = difflib.get_close_matches(name, models, n=5)
        hint = f" Did you mean: {', '.join(close)}?" if close else ""
        raise InputError(f"unknown open_clip architecture {name!r}.{hint} "
                         "`python -c 'import open_clip; print(open_clip.list_models())'` "
                         "lists them; a custom model needs its config JSON.")


def load_model(spec: ModelSpec, device: Optional[str] = None) -> LoadedModel:
    """Build the open_clip model of ``spec`` on ``device`` (auto if None), eval mode."""
    import open_clip

    dev = pick_device(device)
    if spec.config_path:
        if not spec.config_path.is_file():
            raise InputError(f"model config {spec.config_path} does not exist.")
        open_clip.add_model_config(spec.config_path)
    _known_arch(spec.arch)
    if spec.pretrained and spec.checkpoint:
        raise InputError("give either a pretrained tag or a checkpoint file, not both.")
    if spec.pretrained and not _hub_reachable():
        raise InputError(_pretrained_help(spec, OSError("the model hub cannot be reached")))
    try:
        quiet = _no_random_init_notice() if spec.checkpoint else contextlib.nullcontext()
        with quiet:
            model, _, preprocess = open_clip.create_model_and_transforms(
                spec.arch, pretrained=spec.pretrained or None, device="cpu")
    except RuntimeError as exc:
        # open_clip raises RuntimeError for unknown tags, OSError family for
        # failed downloads (wrapped differently across versions).
        raise InputError(_pretrained_help(spec, exc)) from None
    except (OSError, ValueError) as exc:
        raise InputError(_pretrained_help(spec, exc)) from None
    if spec.checkpoint:
        ck = Path(spec.checkpoint)
        if not ck.is_file():
            raise InputError(f"checkpoint {ck} does not exist.")
        try:
            open_clip.load_checkpoint(model, str(ck), strict=True, weights_only=True)
        except Exception as exc:  # unpickling refusals, shape mismatches, corrupt files
            raise InputError(f"checkpoint {ck} could not be loaded into {spec.arch}: "
                             f"{str(exc).splitlines()[0][:300]}") from None
    model = model.to(dev).eval()
    tokenizer = open_clip.get_tokenizer(spec.arch)
    ctx = int(getattr(tokenizer, "context_length", None) or getattr(model, "context_length", 77))
    dim = int(getattr(model, "embed_dim", 0) or _probe_dim(model, tokenizer, dev))
    amp = None
    if dev.type == "cuda":
        amp = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return LoadedModel(model=model, preprocess=preprocess, tokenizer=tokenizer, device=dev,
                       spec=spec, context_length=ctx, dim=dim, autocast_dtype=amp)


#: What open_clip logs (or warns) when it builds a model without weights; true
#: but misleading when a checkpoint is loaded into that model right after.
_RANDOM_INIT_NOTICES = ("No pretrained weights loaded", "initialized randomly",
                        "initialized partially")


class _DropRandomInit(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        try:
            msg = record.getMessage()
        except Exception:  # pragma: no cover - a malformed record is not ours to judge
            return True
        return not any(n in msg for n in _RANDOM_INIT_NOTICES)


@contextlib.contextmanager
def _no_random_init_notice():
    """While a model is built for a checkpoint: drop open_clip's "No pretrained
    weights loaded ... initialized randomly" notice (the checkpoint is loaded
    next, with strict key matching, so the model is not random). open_clip logs
    it through the root logger; a filter on the root logger and on its handlers
    (and the same text as a Python warning) removes only that message."""
    flt = _DropRandomInit()
    root = logging.getLogger()
    targets = [root, *root.handlers,
               logging.getLogger("open_clip"), logging.getLogger("open_clip.factory")]
    for t in targets:
        t.addFilter(flt)
    try:
        with warnings.catch_warnings():
            for notice in _RANDOM_INIT_NOTICES:
                warnings.filterwarnings("ignore", message=f".*{notice}")
            yield
    finally:
        for t in targets:
            t.removeFilter(flt)


def _hub_reachable(timeout: float = 3.0) -> bool:
    """Whether open_clip's weight host resolves; avoids a minute of retries offline.

    Weights already in the local Hugging Face cache still load when
    HF_HUB_OFFLINE=1 is set, which skips this check.
    """
    import socket
    from urllib.parse import urlparse

    if os.environ.get("HF_HUB_OFFLINE") == "1":
        return True
    host = urlparse(os.environ.get("HF_ENDPOINT", "https://huggingface.co")).hostname
    old = socket.getdefaulttimeout()
    socket.setdefaulttimeout(timeout)
    try:
        socket.getaddrinfo(host, 443)
        return True
    except OSError:
        return False
    finally:
        socket.setdefaulttimeout(old)


def _probe_dim(model, tokenizer, dev) -> int:
    with torch.inference_mode():
        return int(model.encode_text(tokenizer(["a"]).to(dev)).shape[-1])


def _pretrained_help(spec: ModelSpec, exc: Exception) -> str:
    first = str(exc).splitlines()[0][:300] if str(exc) else type(exc).__name__
    return (f"could not load pretrained weights {spec.arch}/{spec.pretrained} ({first}). "
            "If this machine has no internet, download the weights elsewhere and pass "
            "them with --checkpoint FILE (and no --pretrained), or set HF_HUB_OFFLINE=1 "
            "to use weights already in the Hugging Face cache (~/.cache/huggingface "
            "or $HF_HOME).")


def _autocast(lm: LoadedModel):
    if lm.autocast_dtype is None:
        return torch.autocast("cpu", enabled=False)
    return torch.autocast(lm.device.type, dtype=lm.autocast_dtype)


def encode_image_batch(lm: LoadedModel, pixels: torch.Tensor) -> np.ndarray:
    """Raw image embeddings [B, d] float32 for preprocessed pixels [B, 3, H, W]."""
    with torch.inference_mode(), _autocast(lm):
        out = lm.model.encode_image(pixels.to(lm.device, non_blocking=True), normalize=False)
    return out.float().cpu().numpy()


def count_truncated(lm: LoadedModel, captions: list[str]) -> int:
    """How many captions exceed the model's context (they are truncated)."""
    tok = getattr(lm.tokenizer, "tokenizer", None) or lm.tokenizer
    encode = getattr(tok, "encode", None)
    if encode is None:
        return 0
    # +2 for the start and end tokens the tokenizer adds.
    return sum(1 for c in captions if len(encode(c)) + 2 > lm.context_length)


def encode_texts(lm: LoadedModel, captions: list[str], batch_size: Optional[int] = None
                 ) -> np.ndarray:
    """Raw text embeddings [N, d] float32; captions longer than the context are truncated."""
    bs = batch_size or lm.default_batch_size * 4
    out = []
    for s in range(0, len(captions), bs):
        tokens = lm.tokenizer(list(captions[s:s + bs]))
        with torch.inference_mode(), _autocast(lm):
            emb = lm.model.encode_text(tokens.to(lm.device), normalize=False)
        out.append(emb.float().cpu().numpy())
    if not out:
        return np.zeros((0, lm.dim), np.float32)
    return np.concatenate(out).astype(np.float32, copy=False)


def encode_image_files(lm: LoadedModel, paths: list, batch_size: Optional[int] = None
                       ) -> np.ndarray:
    """Raw embeddings of image files (queries, conformity of an uploaded image)."""
    from .images import open_image

    bs = batch_size or lm.default_batch_size
    out = []
    for s in range(0, len(paths), bs):
        pix = torch.stack([lm.preprocess(open_image(p)) for p in paths[s:s + bs]])
        out.append(encode_image_batch(lm, pix))
    return np.concatenate(out) if out else np.zeros((0, lm.dim), np.float32)


def default_workers() -> int:
    """DataLoader decoding workers: leave one core to the model."""
    return max(0, min(4, (os.cpu_count() or 1) - 1))


def _package_relative(path: Optional[str]) -> Optional[str]:
    """Bundled assets are recorded relative to the project root (``assets/...``)."""
    if not path or Path(path).is_absolute():
        return path
    root = Path(__file__).resolve().parent.parent
    return str(root / path) if (root / path).exists() else path


def spec_from_manifest(model: Optional[dict], dataset: str = "") -> ModelSpec:
    """The ModelSpec a dataset was embedded with, to embed queries the same way."""
    if not model or not model.get("name") or model.get("kind") == "none":
        raise InputError(f"dataset {dataset!r} records no open_clip model (imported arrays "
                         "or synthetic data), so text or image queries cannot be embedded; "
                         "query with an item of the dataset instead.")
    name = _package_relative(model.get("config")) or model["name"]
    ck = _package_relative(model.get("checkpoint"))
    if ck and not Path(ck).is_file():
        raise InputError(f"dataset {dataset!r} was embedded with checkpoint {ck}, which is "
                         "no longer there.")
    if ck and model.get("checkpoint_sha256") and file_sha256(ck) != model["checkpoint_sha256"]:
        raise InputError(f"checkpoint {ck} changed since dataset {dataset!r} was embedded "
                         "(sha256 differs); queries would not be comparable.")
    return ModelSpec(name, pretrained=model.get("pretrained"), checkpoint=ck)
