"""Bundle the real embeddings of "Mind the Gap" (Liang et al., NeurIPS 2022)
as six read-only example datasets under ``assets/``.

The arrays were published with the paper (repository Weixin-Liang/Modality-Gap,
folder ``Figure_1_Modality_Gap/``, MIT licence): three contrastive models,
each trained and at random initialisation, embedding the same items in the
same order. They reproduce the paper's Fig. 1 offline: the gap is already
there at initialisation (the cone effect) and training keeps it.

=====================  ==============================================  =====  ===
dataset                model; modalities                               pairs  d
=====================  ==============================================  =====  ===
gap-convirt            ConVIRT (trained); chest X-rays / reports       500    512
gap-convirt-init       ConVIRT (random initialisation)                 500    512
gap-videoclip          VideoCLIP (trained); videos / captions          100    768
gap-videoclip-init     VideoCLIP (random initialisation)               100    768
gap-clasp              CLASP (trained); amino-acid sequences / text    99     768
gap-clasp-init         CLASP (random initialisation)                   99     768
=====================  ==============================================  =====  ===

Each source file is one float32 array (2, N, d): [0] the non-text modality
(stored as "images"), [1] the paired text; already L2-normalised (so norm
statistics describe the unit sphere, and the report says so). No images or
texts were published, so the rows are named by position: image ids
``xray 17`` / ``video 17`` / ``sequence 17`` and captions ``report 17`` /
``caption 17`` / ``description 17``; a trained dataset and its
initialisation share them, so :func:`clipgeom.compare.compare` aligns their
rows. Each folder carries the licence (``LICENSE``), the attribution in its
manifest (``source``) and its report at CLIP's default temperature (the
models' own temperatures were not published with the arrays) in ``cache/``.

    python -m clipgeom.demo.gap_examples                    # from ../shared/data/modality-gap
    python -m clipgeom.demo.gap_examples --src DIR --out assets
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
from pathlib import Path
from typing import Callable, Optional

import numpy as np
import pandas as pd

from .. import report, store
from ..errors import InputError

ROOT = Path(__file__).resolve().parent.parent.parent
DEFAULT_SRC = ROOT.parent / "shared" / "data" / "modality-gap"
ASSETS = ROOT / "assets"

PAPER = ("Weixin Liang, Yuhui Zhang, Yongchan Kwon, Serena Yeung, James Zou. "
         "Mind the Gap: Understanding the Modality Gap in Multi-modal Contrastive "
         "Representation Learning. NeurIPS 2022. arXiv:2203.02053")
REPOSITORY = "https://github.com/Weixin-Liang/Modality-Gap"
COMMIT = "8e20cb24efa4c5f89aad694f2f65eb43ffc46d10"
FOLDER = "Figure_1_Modality_Gap"

# key: (model name, non-text modality, text modality, image-id word, caption word)
MODELS = {
    "convirt": ("ConVIRT", "chest X-ray image", "radiology report", "xray", "report"),
    "videoclip": ("VideoCLIP", "video", "video caption", "video", "caption"),
    "clasp": ("CLASP", "amino-acid sequence", "protein description text", "sequence",
              "description"),
}
STATES = {"trained": ("", "", "trained"),
          "init": ("-init", "_random", "random initialisation")}


def dataset_names() -> list[str]:
    """The six bundled names, trained before init, in MODELS order."""
    return [f"gap-{m}{STATES[s][0]}" for m in MODELS for s in STATES]


def load_pairs(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """(non-text rows, text rows) of one published (2, N, d) array."""
    arr = np.load(path, allow_pickle=False)
    if arr.ndim != 3 or arr.shape[0] != 2:
        raise InputError(f"{path}: expected one array of shape (2, N, d), got {arr.shape}.")
    return np.ascontiguousarray(arr[0], np.float32), np.ascontiguousarray(arr[1], np.float32)


def _tables(key: str, n: int, source_file: str) -> tuple[pd.DataFrame, pd.DataFrame]:
    _, _, _, img_word, cap_word = MODELS[key]
    image_ids = [f"{img_word} {i}" for i in range(n)]
    images = pd.DataFrame({"image_id": image_ids,
                           "source": [f"{source_file} [0][{i}]" for i in range(n)]})
    texts = pd.DataFrame({"text_id": [f"{cap_word} {i}" for i in range(n)],
                          "caption": [f"{cap_word} {i}" for i in range(n)],
                          "image_id": image_ids})
    return images, texts


def _metadata(key: str, state: str, source_file: str, sha256: str, n: int, d: int
              ) -> tuple[dict, dict, dict]:
    name, other, text, _, _ = MODELS[key]
    label = STATES[state][2]
    model = {"name": f"{name} ({'trained' if state == 'trained' else 'random init'})",
             "architecture": name, "state": label, "pretrained": None,
             "modalities": {"image": other, "text": text}, "temperature": None,
             "temperature_note": "not published with the embeddings; reports use CLIP's 0.01"}
    source = {"kind": "published embeddings", "paper": PAPER, "repository": REPOSITORY,
              "commit": COMMIT, "path": f"{FOLDER}/{source_file}", "sha256": sha256,
              "licence": "MIT", "licence_file": "LICENSE",
              "copyright": "Copyright (c) 2022 (the repository's MIT licence)",
              "note": ("array (2, N, d): [0] the non-text modality (stored as images), [1] "
                       "the paired text; already L2-normalised by the authors. No images, "
                       "texts or sequences were published: ids and captions name the row.")}
    counterpart = f"gap-{key}" if state == "init" else f"gap-{key}-init"
    extra = {"gap_example": {"family": key, "model": name, "state": label, "pairs": n,
                             "dim": d, "counterpart": counterpart,
                             "figure": "Liang et al. 2022, Fig. 1 (modality gap at "
                                       "initialisation and after training)"}}
    return model, source, extra


def build_one(key: str, state: str, src: Path, out_dir: Path, licence: Path) -> Path:
    """Write one bundled dataset folder ``out_dir / gap-<key>[-init]`` (replaced whole)."""
    suffix, file_suffix, _ = STATES[state]
    name = f"gap-{key}{suffix}"
    source_file = f"features_{key}{file_suffix}.npy"
    path = src / source_file
    if not path.is_file():
        raise InputError(f"{path}: not found; give --src the folder with the published "
                         "modality-gap arrays (see its README).")
    image, text = load_pairs(path)
    n, d = image.shape
    images, texts = _tables(key, n, source_file)
    model, source, extra = _metadata(key, state, source_file, store.sha256_file(path), n, d)
    target = out_dir / name
    with tempfile.TemporaryDirectory() as tmp:
        home = Path(tmp) / "home"
        ds = store.create_dataset("gap-build", image, text, images, texts, model=model,
                                  source=source, extra_manifest=extra, home=home)
        staged = target.with_name(target.name + ".new")
        shutil.rmtree(staged, ignore_errors=True)
        shutil.copytree(ds.path, staged, ignore=shutil.ignore_patterns(".readers"))
        for sub in ("thumbs", "index", "cache"):         # empty, or not shipped
            shutil.rmtree(staged / sub, ignore_errors=True)
        # the report the dashboard opens with (the model's default τ) ships too
        shutil.rmtree(ds.path / "cache", ignore_errors=True)
        report.stored_report(ds, temperature=report.default_temperature(ds))
        shutil.copytree(ds.path / "cache", staged / "cache")
        ds.close()
        m = json.loads((staged / store.MANIFEST).read_text())
        m["name"] = name                                 # the folder's name
        for section in ("arrays", "tables"):             # a copy has other inodes/mtimes
            for meta in m.get(section, {}).values():
                meta.pop("stat", None)
        (staged / store.MANIFEST).write_text(json.dumps(m, indent=1))
        shutil.copyfile(licence, staged / "LICENSE")
        if target.exists():
            shutil.rmtree(target)
        staged.rename(target)
    return target


def build_all(src: Path = DEFAULT_SRC, out_dir: Path = ASSETS,
              progress: Optional[Callable[[str], None]] = None) -> list[Path]:
    """Build the six bundled datasets from the published arrays in ``src``."""
    src, out_dir = Path(src), Path(out_dir)
    licence = src / "LICENSE"
    if not licence.is_file():
        raise InputError(f"{licence}: the MIT licence of the published arrays is missing; "
                         "it must ship with every copy.")
    out_dir.mkdir(parents=True, exist_ok=True)
    say = progress or (lambda m: None)
    done = []
    for key in MODELS:
        for state in STATES:
            say(f"gap-{key}{STATES[state][0]}")
            done.append(build_one(key, state, src, out_dir, licence))
    return done


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m clipgeom.demo.gap_examples",
                                description=__doc__.split("\n\n")[0])
    p.add_argument("--src", default=str(DEFAULT_SRC),
                   help="folder with features_*.npy, README.md and LICENSE")
    p.add_argument("--out", default=str(ASSETS), help="assets folder to write into")
    args = p.parse_args(argv)
    for path in build_all(Path(args.src), Path(args.out), progress=lambda m: print(f"... {m}")):
        size = sum(f.stat().st_size for f in path.rglob("*") if f.is_file())
        print(f"{path} ({size / 2 ** 20:.2f} MB)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
