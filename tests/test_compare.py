"""clipgeom.compare and `python -m clipgeom compare`, each number against a
reference computed another way (Gram-matrix CKA, numpy gap from the published
arrays, rotation invariance, a dataset against itself)."""

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import scipy.stats

from clipgeom import compare, store, synthetic
from clipgeom.__main__ import main

from brute import conformity as brute_conformity, unit

ROOT = Path(__file__).resolve().parent.parent
SHARED = ROOT.parent / "shared" / "data" / "modality-gap"
GAP_MEASURES = ("modality_gap.centroid_distance", "modality_gap.normalized_centroid_distance",
                "modality_gap.instance_gap", "modality_gap.rmg", "modality_gap.frechet.total",
                "modality_gap.frechet.mean_term", "modality_gap.frechet.cov_term")
PAIR_KEYS = {"a", "b", "modality", "aligned", "reason", "cka", "mutual_knn",
             "conformity_spearman"}


def gram_cka(x, y):
    """Linear CKA by centred N x N Gram matrices (Kornblith et al. 2019, HSIC form)."""
    x = np.asarray(x, np.float64)
    y = np.asarray(y, np.float64)
    h = np.eye(len(x)) - 1.0 / len(x)
    k = h @ x @ x.T @ h
    l_ = h @ y @ y.T @ h
    return float(np.sum(k * l_) / math.sqrt(np.sum(k * k) * np.sum(l_ * l_)))


def tables(n, img_word="item", cap_word="caption"):
    ids = [f"{img_word} {i}" for i in range(n)]
    images = pd.DataFrame({"image_id": ids})
    texts = pd.DataFrame({"caption": [f"{cap_word} {i}" for i in range(n)], "image_id": ids})
    return images, texts


def make(name, image, text, img_word="item", cap_word="caption", home=None, **kw):
    images, texts = tables(len(image), img_word, cap_word)
    return store.create_dataset(name, image, text, images, texts, home=home, **kw)


N, D = 160, 12


@pytest.fixture
def spaces(clipgeom_home):
    """a; rot = a rotated (both modalities, same ids); other = unrelated ids."""
    data = synthetic.two_shells(N, D, seed=5)
    q, _ = np.linalg.qr(np.random.default_rng(9).standard_normal((D, D)))
    make("a", data.image, data.text, model={"name": "m", "temperature": 0.05})
    make("rot", data.image @ q, data.text @ q)
    other = synthetic.two_shells(N, D, seed=6)
    make("other", other.image, other.text, img_word="photo", cap_word="text")
    return data, q


def test_dataset_against_itself(spaces):
    data, _ = spaces
    cmp = compare.compare(["a", "a"], max_pairs=N)
    assert cmp.datasets == ["a", "a"]
    assert [p.modality for p in cmp.pairs] == ["image", "text"]
    for p in cmp.pairs:
        assert p.aligned and "same dataset" in p.reason
        assert p.cka == pytest.approx(1.0, abs=1e-9)
        assert p.mutual_knn == 1.0
        assert p.conformity_spearman == pytest.approx(1.0, abs=1e-12)
        assert p.n_used == N
    for key, diffs in cmp.differences.items():
        assert all(d is None or d == 0 for d in diffs), key
    # the table holds the dataset's numbers: the model's own tau, Liang's gap
    assert cmp.table["temperature"] == [0.05, 0.05]
    want = np.linalg.norm(unit(data.image).mean(0) - unit(data.text).mean(0))
    assert cmp.table["modality_gap.normalized_centroid_distance"][0] == \
        pytest.approx(want, rel=1e-6)


def test_rotated_copy_aligns_with_cka_one_and_the_same_gap(spaces):
    data, q = spaces
    cmp = compare.compare(["a", "rot"], max_pairs=N)
    for mod in ("image", "text"):
        p = cmp.pair("a", "rot", mod)
        assert p.aligned
        assert p.cka == pytest.approx(1.0, abs=1e-6)
        assert p.mutual_knn >= 0.99                   # cosine kNN is rotation invariant
        assert p.conformity_spearman == pytest.approx(1.0, abs=1e-6)
    assert "same image ids" in cmp.pair("a", "rot", "image").reason
    assert "same captions" in cmp.pair("a", "rot", "text").reason
    for key in GAP_MEASURES:
        a, b = cmp.table[key]
        assert b == pytest.approx(a, rel=1e-4, abs=1e-6), key
    # and the instance gap is the numpy one (mean distance of unit pairs)
    want = np.mean(np.linalg.norm(unit(data.image) - unit(data.text), axis=1))
    assert cmp.table["modality_gap.instance_gap"][1] == pytest.approx(want, rel=1e-5)


def test_cross_space_numbers_match_direct_computation(spaces):
    """a vs a rescaled anisotropically (same ids): CKA < 1, and every number
    equals the Gram-matrix / brute-force value."""
    data, _ = spaces
    scale = np.linspace(0.2, 4.0, D).astype(np.float32)
    make("stretched", data.image * scale, data.text * scale)
    p = compare.compare(["a", "stretched"], max_pairs=N).pair("a", "stretched", "image")
    x, y = data.image, data.image * scale
    assert p.cka == pytest.approx(gram_cka(x, y), rel=1e-6)
    assert p.cka < 0.999
    s = scipy.stats.spearmanr(brute_conformity(x), brute_conformity(y)).statistic
    assert p.conformity_spearman == pytest.approx(s, abs=1e-9)
    cx, cy = unit(x) @ unit(x).T, unit(y) @ unit(y).T
    np.fill_diagonal(cx, -np.inf)
    np.fill_diagonal(cy, -np.inf)
    k = p.mutual_knn_k
    shared = [len(set(np.argsort(-cx[i])[:k]) & set(np.argsort(-cy[i])[:k])) / k
              for i in range(N)]
    # float32 vs float64 may swap one near-tie at the k-th neighbour
    assert p.mutual_knn == pytest.approx(np.mean(shared), abs=1.5 / (k * N))


def test_different_ids_do_not_align(spaces):
    cmp = compare.compare(["a", "other"], max_pairs=N)
    img, txt = cmp.pair("a", "other", "image"), cmp.pair("a", "other", "text")
    assert not img.aligned and not txt.aligned
    assert "image ids differ at row 0 ('item 0' vs 'photo 0')" in img.reason
    assert "captions differ at row 0" in txt.reason
    assert img.cka is None and img.mutual_knn is None and img.conformity_spearman is None
    js = cmp.to_json()["pairs"][0]
    assert js["cka"] is None and js["mutual_knn"] == {"k": None, "value": None}


def test_store_generated_ids_are_not_evidence_of_alignment(clipgeom_home):
    """Two unrelated sets given no ids get the same store ids img00000...: the
    rows are not the same items, and compare must not say they are."""
    x = synthetic.two_shells(50, 8, seed=1)
    y = synthetic.two_shells(50, 8, seed=2)
    store.create_dataset("p", x.image, x.text)
    store.create_dataset("q", y.image, y.text)
    cmp = compare.compare(["p", "q"], max_pairs=50)
    for mod in ("image", "text"):
        p = cmp.pair("p", "q", mod)
        assert not p.aligned and p.cka is None
    assert "generated by the store" in cmp.pair("p", "q", "image").reason


def test_images_align_by_id_while_different_captions_do_not(clipgeom_home):
    """Same image ids: the images are the same items. Different real captions are
    other texts (no text alignment); no captions at all: the texts align through
    the image ids they belong to."""
    x = synthetic.two_shells(40, 8, seed=1)
    make("u", x.image, x.text, cap_word="a photo of")
    make("v", x.image, x.text, cap_word="a picture of")
    ids = [f"item {i}" for i in range(40)]
    for name, scale in (("w", 1.0), ("z", 2.0)):         # isotropic scaling: CKA 1
        store.create_dataset(name, x.image * scale, x.text * scale,
                             pd.DataFrame({"image_id": ids}), pd.DataFrame({"image_id": ids}))
    uv = compare.compare(["u", "v"], max_pairs=40)
    assert uv.pair("u", "v", "image").aligned
    txt = uv.pair("u", "v", "text")
    assert not txt.aligned and "captions differ at row 0" in txt.reason
    wz = compare.compare(["w", "z"], max_pairs=40).pair("w", "z", "text")
    assert wz.aligned and "same image ids" in wz.reason
    assert wz.cka == pytest.approx(1.0, abs=1e-6)


def test_fewer_than_two_and_bad_step_are_refused(spaces):
    from clipgeom.errors import ClipgeomError
    with pytest.raises(ClipgeomError, match="at least two"):
        compare.compare(["a"])
    with pytest.raises(ClipgeomError, match="must be a training step"):
        compare.compare(["a", "a@last"])
    with pytest.raises(ClipgeomError, match="no training snapshots"):
        compare.compare(["a", "a@0"])


DEMO = ROOT / "assets" / "demo" / "manifest.json"


@pytest.mark.skipif(not DEMO.exists(), reason="bundled demo not built")
def test_demo_snapshots_align_and_cka_matches_numpy(bundled_home):
    cmp = compare.compare(["demo@0", "demo@2000"])
    ds = store.open_dataset("demo")
    a = np.asarray(ds.extra_array("snapshot_image_0"), np.float64)
    b = np.asarray(ds.extra_array("snapshot_image_2000"), np.float64)
    p = cmp.pair("demo@0", "demo@2000", "image")
    assert p.aligned and "training snapshots of one dataset" in p.reason
    assert p.n_used == len(a)
    assert p.cka == pytest.approx(gram_cka(a, b), rel=1e-5)
    assert cmp.pair("demo@0", "demo@2000", "text").aligned
    # the step-0 gap is the numpy one of the step-0 arrays
    t0 = np.asarray(ds.extra_array("snapshot_text_0"), np.float64)
    want = np.linalg.norm(unit(a).mean(0) - unit(t0).mean(0))
    assert cmp.table["modality_gap.normalized_centroid_distance"][0] == \
        pytest.approx(want, rel=1e-6)


GAP = ROOT / "assets" / "gap-convirt" / "manifest.json"
needs_gap = pytest.mark.skipif(not GAP.exists() or not (SHARED / "features_convirt.npy").exists(),
                               reason="bundled gap examples or ../shared/data/modality-gap absent")


@needs_gap
def test_bundled_convirt_trained_vs_init(bundled_home):
    cmp = compare.compare(["gap-convirt", "gap-convirt-init"])
    for col, fname in enumerate(("features_convirt.npy", "features_convirt_random.npy")):
        arr = np.load(SHARED / fname, allow_pickle=False).astype(np.float64)
        want = np.linalg.norm(unit(arr[0]).mean(0) - unit(arr[1]).mean(0))
        got = cmp.table["modality_gap.normalized_centroid_distance"][col]
        assert got == pytest.approx(want, rel=1e-6), fname
    for mod in ("image", "text"):
        p = cmp.pair("gap-convirt", "gap-convirt-init", mod)
        assert p.aligned and p.n_used == 500 and p.cka is not None
    # the reports shipped in the folders were used: nothing was computed
    assert not list((bundled_home / "cache").rglob("report-*.json"))


@needs_gap
def test_bundled_gap_examples_are_the_published_arrays_with_attribution(bundled_home):
    from clipgeom.demo import gap_examples

    licence = (SHARED / "LICENSE").read_text()
    for name in gap_examples.dataset_names():
        ds = store.verify_dataset(name)                  # re-hashes every file
        src = ds.manifest["source"]
        assert src["licence"] == "MIT" and "Modality-Gap" in src["repository"]
        assert "Mind the Gap" in src["paper"] and len(src["commit"]) == 40
        assert (ds.path / "LICENSE").read_text() == licence
        arr = np.load(SHARED / Path(src["path"]).name, allow_pickle=False)
        np.testing.assert_array_equal(np.asarray(ds.image_emb), arr[0])
        np.testing.assert_array_equal(np.asarray(ds.text_emb), arr[1])
        assert ds.read_only and ds.normalized_input == {"image": True, "text": True}
    size = sum(p.stat().st_size for p in (ROOT / "assets").rglob("*") if p.is_file())
    assert size <= 60 * 2 ** 20


def test_cli_json_has_exactly_the_contract(spaces, clipgeom_home, tmp_path):
    env = dict(os.environ, PYTHONPATH=str(ROOT), CLIPGEOM_HOME=str(clipgeom_home),
               CLIPGEOM_ASSETS=str(tmp_path / "no-assets"), OPENBLAS_NUM_THREADS="1")
    out = subprocess.run([sys.executable, "-m", "clipgeom", "compare", "a", "rot", "other",
                          "--json", "--max-pairs", str(N)], env=env, capture_output=True,
                         text=True, timeout=300, cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    js = json.loads(out.stdout)
    assert set(js) == {"schema", "datasets", "table", "pairs"}
    assert js["schema"] == "clipgeom.compare/1"
    assert js["datasets"] == ["a", "rot", "other"]
    assert len(js["pairs"]) == 6                         # 3 pairs x 2 modalities
    assert {(p["a"], p["b"], p["modality"]) for p in js["pairs"]} == {
        (a, b, m) for a, b in (("a", "rot"), ("a", "other"), ("rot", "other"))
        for m in ("image", "text")}
    for p in js["pairs"]:
        assert set(p) == PAIR_KEYS and set(p["mutual_knn"]) == {"k", "value"}
        assert p["aligned"] == (p["b"] == "rot")
        assert (p["cka"] is None) == (not p["aligned"])
    for key in ("separability.n_above_1", "separability.svm_top2.accuracy",
                "image.shell_radius", "text.shell_std", "image.mean_over_sigma",
                *GAP_MEASURES, "image.effective_rank", "text.hubness.skew",
                "image.conformity.pearson", "text.conformity.theory_a",
                "alpha_sweep.both.argmin", "loss.accuracy_i2t", "loss.accuracy_t2i"):
        assert len(js["table"][key]) == 3, key
    assert js["table"]["temperature"] == [0.05, 0.01, 0.01]


def test_cli_readable_table_names_every_dataset(spaces, capsys):
    assert main(["compare", "a", "rot", "other", "--quiet", "--max-pairs", str(N)]) == 0
    text = capsys.readouterr().out
    header = [ln for ln in text.splitlines() if ln.startswith("measure")][0]
    assert header.split()[1:4] == ["a", "rot", "other"]
    assert "a vs other, image: not aligned" in text
    assert "a vs rot, image: CKA 1" in text
    assert main(["compare", "a"]) == 2                   # one dataset: a user error
