import os
import sys

# Tests use small arrays: one BLAS thread avoids thread oversubscription on a
# 2-core machine (set before numpy is imported).
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


@pytest.fixture
def clipgeom_home(tmp_path, monkeypatch):
    """An empty CLIPGEOM_HOME, and no bundled datasets, for the test."""
    from clipgeom import store

    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("CLIPGEOM_HOME", str(home))
    no_assets = tmp_path / "no-assets"
    monkeypatch.setenv("CLIPGEOM_ASSETS", str(no_assets))
    monkeypatch.setattr(store, "ASSETS_DIR", no_assets)
    return home


@pytest.fixture
def bundled_home(tmp_path, monkeypatch):
    """An empty CLIPGEOM_HOME with the repository's bundled datasets visible."""
    from clipgeom import store

    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("CLIPGEOM_HOME", str(home))
    monkeypatch.delenv("CLIPGEOM_ASSETS", raising=False)
    monkeypatch.setattr(store, "ASSETS_DIR", ROOT / "assets")
    return home


@pytest.fixture
def rng():
    return np.random.default_rng(1234)


TINY_CONFIG = {
    "embed_dim": 32,
    "vision_cfg": {"image_size": 32, "layers": 1, "width": 32, "patch_size": 8,
                   "head_width": 16},
    "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 32, "heads": 2,
                 "layers": 1},
}


@pytest.fixture(scope="session")
def tiny_model_config(tmp_path_factory):
    """A tiny open_clip config JSON (random weights, builds offline in ~1 s)."""
    import json

    path = tmp_path_factory.mktemp("models") / "tiny-clip-test.json"
    path.write_text(json.dumps(TINY_CONFIG))
    return path


@pytest.fixture
def image_folder(tmp_path):
    """12 small generated PNG/JPEG images and a captions CSV (2 captions for img0)."""
    from PIL import Image, ImageDraw

    root = tmp_path / "imgs"
    root.mkdir()
    colours = ["red", "green", "blue", "yellow", "purple", "orange"]
    rows = ["image,caption"]
    for k in range(12):
        img = Image.new("RGB", (40 + 3 * k, 36), "white")
        ImageDraw.Draw(img).ellipse([4, 4, 20 + k, 30], fill=colours[k % 6])
        ext = "png" if k % 2 else "jpg"
        img.save(root / f"img{k}.{ext}")
        rows.append(f"img{k}.{ext},a {colours[k % 6]} circle number {k}")
    rows.append("img0.jpg,another caption of the first image")
    (tmp_path / "captions.csv").write_text("\n".join(rows) + "\n")
    return root, tmp_path / "captions.csv"


@pytest.fixture
def checkpoint(tiny_model_config, tmp_path):
    """Weights for the tiny config, so every load gives the same model."""
    import torch

    from clipgeom import embed

    torch.manual_seed(11)
    ck = tmp_path / "tiny.pt"
    torch.save(embed.load_model(embed.ModelSpec(str(tiny_model_config))).model.state_dict(), ck)
    return ck


# Test tiers (issue 18). `make test` runs every tier; `make test-fast` leaves
# out the slow ones for development:
#   browser  drives the running app in headless Chromium
#   ray      starts a local Ray (seconds per start)
#   slow     real-process chaos, kill -9 journeys and the working-set scans
# One table, by module, so a new test file joins a tier in one line; a test
# whose name mentions Ray joins the ray tier wherever it lives.
TIERS = {
    "test_browser": ("browser",), "test_journeys": ("browser",),
    "test_jobs_browser": ("browser", "slow"),
    "test_ray_engine": ("ray",),
    "test_working_set": ("slow",), "test_chaos": ("slow",),
    "test_background_jobs": ("slow",),
}


def pytest_collection_modifyitems(config, items):
    for item in items:
        module = item.module.__name__.rsplit(".", 1)[-1] if item.module else ""
        names = set(TIERS.get(module, ()))
        if "ray" in item.name.lower().split("_") or "_ray_" in item.name.lower():
            names.add("ray")
        for name in names:
            item.add_marker(getattr(pytest.mark, name))
