"""A short demo-training run on a tiny config lowers the contrastive loss."""

import json

import numpy as np

from clipgeom.demo import train


def test_short_training_lowers_loss_and_writes_artifacts(tmp_path):
    cfg_path = tmp_path / "tiny-demo.json"
    cfg_path.write_text(json.dumps({
        "embed_dim": 32,
        "vision_cfg": {"image_size": 32, "layers": 1, "width": 64, "head_width": 32,
                       "patch_size": 8},
        "text_cfg": {"context_length": 24, "vocab_size": 49408, "width": 32, "heads": 2,
                     "layers": 1}}))
    cfg = train.TrainConfig(steps=60, batch_size=64, lr=2e-3, warmup=5, n_train=600,
                            captions_per_image=1, n_heldout=100, snapshot_steps=[0, 30, -1],
                            config_path=str(cfg_path), image_size=32)
    res = train.train(cfg, tmp_path / "out")
    losses = [c["loss"] for c in res["curve"] if "loss" in c]
    assert np.mean(losses[-1:]) < losses[0] - 0.3            # it learns
    snaps = np.load(tmp_path / "out" / "snapshots.npz")
    assert list(snaps["steps"]) == [0, 30, 60]
    assert snaps["image_0"].shape == (100, 32)
    # raw embeddings: not unit-norm
    assert not np.allclose(np.linalg.norm(snaps["image_60"], axis=1), 1.0, atol=1e-2)
    assert (tmp_path / "out" / "demo-clip.pt").exists()
    assert 0.0 <= res["final"]["recall_at_5"] <= 1.0


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
