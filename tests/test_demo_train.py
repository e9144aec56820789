"""A short demo-training run on a tiny config lowers the contrastive loss."""

import json
import math

import numpy as np
import pytest
import torch

from clipgeom.demo import train

# per objective: what its model config adds (as the shipped demo-*.json do)
OBJECTIVE_CONFIG = {"clip": {},
                    "siglip": {"init_logit_scale": math.log(10), "init_logit_bias": -10.0},
                    "euclid": {"init_logit_scale": math.log(0.1)}}


@pytest.mark.parametrize("loss", sorted(OBJECTIVE_CONFIG))
def test_short_training_lowers_loss_and_writes_artifacts(tmp_path, loss):
    cfg_path = tmp_path / "tiny-demo.json"
    cfg_path.write_text(json.dumps({
        **OBJECTIVE_CONFIG[loss],
        "embed_dim": 32,
        "vision_cfg": {"image_size": 32, "layers": 1, "width": 64, "head_width": 32,
                       "patch_size": 8},
        "text_cfg": {"context_length": 24, "vocab_size": 49408, "width": 32, "heads": 2,
                     "layers": 1}}))
    cfg = train.TrainConfig(steps=60, batch_size=64, lr=2e-3, warmup=5, n_train=600,
                            captions_per_image=1, n_heldout=100, snapshot_steps=[0, 30, -1],
                            config_path=str(cfg_path), image_size=32, loss=loss)
    res = train.train(cfg, tmp_path / "out")
    losses = [c["loss"] for c in res["curve"] if "loss" in c]
    assert np.mean(losses[-1:]) < losses[0] - 0.3            # it learns
    snaps = np.load(tmp_path / "out" / "snapshots.npz")
    assert list(snaps["steps"]) == [0, 30, 60]
    assert snaps["image_0"].shape == (100, 32)
    # raw embeddings: not unit-norm
    assert not np.allclose(np.linalg.norm(snaps["image_60"], axis=1), 1.0, atol=1e-2)
    assert res["arch"] == "tiny-demo"                       # files named by the config
    assert (tmp_path / "out" / "tiny-demo.pt").exists()
    assert (tmp_path / "out" / "tiny-demo.json").exists()
    assert 0.0 <= res["final"]["recall_at_5"] <= 1.0
    if loss == "siglip":
        assert "logit_bias" in torch.load(tmp_path / "out" / "tiny-demo.pt")
        assert all("logit_bias" in c for c in res["curve"] if "loss" in c)


def test_euclidean_logits_are_negative_scaled_squared_distances():
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(5, 7, generator=g), torch.randn(6, 7, generator=g)
    got = train.euclidean_logits(x, y, torch.tensor(0.3))
    want = -0.3 * torch.cdist(x.double(), y.double()) ** 2
    torch.testing.assert_close(got.double(), want, atol=1e-5, rtol=1e-5)


def test_objectives_and_their_configs():
    assert set(train.LOSS_CONFIGS) == {"clip", "siglip", "euclid"}
    for loss, path in train.LOSS_CONFIGS.items():
        cfg = json.loads(path.read_text())
        base = json.loads(train.CONFIG.read_text())
        # the same towers: only the logit scale / bias initialisation differs
        assert {k: v for k, v in cfg.items() if not k.startswith("init_logit")} == base
        assert "siglip" not in path.stem     # open_clip would switch to SigLIP's tokenizer
    with pytest.raises(ValueError, match="unknown loss"):
        train.model_config(train.TrainConfig(loss="hinge"))


def test_evaluate_scores_euclidean_models_by_distance():
    """With score="euclid", retrieval ranks by -||x - y||^2, not by cosine: two
    captions in one direction at different lengths are told apart."""
    from clipgeom.demo import world as W

    w = W.generate(2, seed=5, captions_per_image=1)
    img = np.array([[1.0, 0.0], [2.0, 0.0]])
    txt = np.array([[1.0, 0.0], [2.0, 0.0]])       # same direction: cosine ties
    q = train.evaluate(img, txt, w, np.arange(2), score="euclid")
    assert q["recall_at_1"] == 1.0


def test_evaluate_on_perfect_and_shuffled_embeddings():
    from clipgeom.demo import world as W

    w = W.generate(200, seed=5, captions_per_image=1)
    rng = np.random.default_rng(0)
    emb = rng.standard_normal((200, 16))
    q = train.evaluate(emb, emb.copy(), w, np.arange(200))
    odd = np.asarray(w.odd, bool)
    assert q["recall_at_1"] == 1.0 and q["recall_at_5"] == 1.0
    assert q["caption_true_i2t"] == 1.0 - odd.mean()          # odd captions are never true
    assert q["image_true_t2i"] == 1.0
    perm = rng.permutation(200)
    q2 = train.evaluate(emb, emb[perm], w, np.arange(200))
    # text row perm[j] sits at j: image i's best caption is row where perm == i
    own = np.argsort(perm)
    assert q2["recall_at_1"] == np.mean(own == np.arange(200))
