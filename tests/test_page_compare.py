"""The Compare page through AppTest: it opens on the bundled comparison, its
numbers equal direct computations on the arrays (CKA, mutual-kNN, conformity
Spearman, the most-disagreeing items, the overlays' values), its table marks
the cell that differs most, and every control survives a change."""

from pathlib import Path

import numpy as np
import pytest
from scipy.stats import spearmanr

from clipgeom import store, timeline
from dashboard import comparison as C
from dashboard import figures as F
from tests.apptest_helpers import arr, change_every_control, errors, figures, metrics, open_page

ROOT = Path(__file__).resolve().parent.parent
PAGE = ROOT / "pages" / "10_Compare.py"
pytestmark = pytest.mark.skipif(not (ROOT / "assets" / "demo" / "manifest.json").exists(),
                                reason="the bundled demo is not built")


def _unit(x):
    x = np.asarray(x, np.float64)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def _cka(x, y):
    x = np.asarray(x, np.float64) - np.mean(x, 0)
    y = np.asarray(y, np.float64) - np.mean(y, 0)
    return np.linalg.norm(y.T @ x) ** 2 / (np.linalg.norm(x.T @ x) * np.linalg.norm(y.T @ y))


def _knn_sets(x, k):
    g = _unit(x) @ _unit(x).T
    np.fill_diagonal(g, -np.inf)
    return [set(np.argsort(-row, kind="stable")[:k].tolist()) for row in g]


def _conformity(x):
    g = _unit(x) @ _unit(x).T
    return (g.sum(1) - 1.0) / (len(x) - 1)


def _snapshot(step):
    ds = store.open_dataset("demo")
    return timeline.load_snapshot(ds, step)


def _pick(at, sides):
    at.multiselect(key="compare_sides").set_value(sides).run()
    assert not errors(at), errors(at)
    return at


def test_opens_on_the_bundled_comparison_without_errors(bundled_home):
    at = open_page(PAGE)
    assert not errors(at), errors(at)
    want = C.default_sides(C.choices())
    assert at.multiselect(key="compare_sides").value == want
    if all(s in C.choices() for s in C.DEFAULT_SIDES):
        assert want == list(C.DEFAULT_SIDES)          # CLIP vs SigLIP vs Euclidean logits
    assert len(at.get("plotly_chart")) >= 6
    assert any("Differs most" in m.value for m in at.markdown)


def test_cross_space_numbers_equal_brute_force_on_two_training_steps(bundled_home):
    at = _pick(open_page(PAGE), ["demo@0", "demo@2000"])
    a, b = _snapshot(0), _snapshot(2000)
    for mod in ("image", "text"):
        at.radio(key="compare_pair_mod").set_value(mod).run()
        xa, xb = (a.image, b.image) if mod == "image" else (a.text, b.text)
        m = metrics(at)
        assert float(m["linear CKA"]) == pytest.approx(_cka(xa, xb), abs=6e-4)
        sa, sb = _knn_sets(xa, 10), _knn_sets(xb, 10)
        mk = np.mean([len(s & t) / 10 for s, t in zip(sa, sb)])
        assert float(m["mutual-kNN@10"]) == pytest.approx(mk, abs=6e-4)
        rho = spearmanr(_conformity(xa), _conformity(xb)).statistic
        assert float(m["conformity Spearman"]) == pytest.approx(rho, abs=6e-4)
        assert m["aligned items"] == f"{len(xa):,}"
        # the most-disagreeing items: percentile of conformity under A minus under B
        ca, cb = _conformity(xa), _conformity(xb)
        gap = (np.argsort(np.argsort(ca)) - np.argsort(np.argsort(cb))) / (len(ca) - 1)
        pv = C.pair_view(["demo@0", "demo@2000"], 0, 1, mod)
        # float32 products (conformity's speed) vs float64 here: at initialisation
        # conformity spans only ~3e-4, so ranks may swap among near-ties
        np.testing.assert_allclose(pv.conf_a, ca, rtol=1e-6, atol=1e-7)
        np.testing.assert_allclose(pv.conf_b, cb, rtol=1e-6, atol=1e-7)
        top, bottom = C.disagreements(pv, 8)
        assert gap[top].min() >= np.sort(gap)[-8] - 0.02
        assert gap[bottom].max() <= np.sort(gap)[7] + 0.02
        assert gap[top].min() > 0.5 and gap[bottom].max() < -0.5
        scatter = next(f for f in figures(at) if f["data"][0].get("customdata") is not None
                       and "conformity under" in str(f["layout"]["xaxis"]["title"]))
        x = arr(scatter["data"][0]["x"])
        pos = arr(scatter["data"][0]["customdata"]).ravel().astype(int)
        np.testing.assert_allclose(x, ca[pos], atol=1e-6)


def test_the_gap_and_norm_overlays_show_each_side_in_its_own_colour(bundled_home):
    at = _pick(open_page(PAGE), ["gap-convirt-init", "gap-convirt", "demo"])
    figs = figures(at)
    norms = next(f for f in figs if "norm" in str(f["layout"].get("xaxis", {}).get("title")))
    names = [t["name"] for t in norms["data"] if t.get("xaxis") in (None, "x")]
    assert names == ["gap-convirt-init", "gap-convirt", "demo"]
    cols = {t["name"]: t["marker"]["color"] for t in norms["data"]}
    assert len(set(cols.values())) == 3
    assert not set(cols.values()) & set(F.MODALITY_COLOURS.values())
    # drawn values: the raw norms of each side's rows (all rows: below the sample cap)
    ds = store.open_dataset("demo")
    demo_x = next(arr(t["x"]) for t in norms["data"]
                  if t["name"] == "demo" and t.get("xaxis") in (None, "x"))
    np.testing.assert_allclose(np.sort(demo_x),
                               np.sort(np.linalg.norm(np.asarray(ds.image_emb, np.float64),
                                                      axis=1)), rtol=1e-6)
    # Liang et al. Fig. 1: trained ConVIRT's normalised modalities lie apart on PC 1
    gap = next(f for f in figs if len([t for t in f["data"] if t.get("type") == "scattergl"])
               >= 6)
    trained = [t for t in gap["data"] if t.get("xaxis") == "x2"]
    xi, xt = (arr(t["x"]) for t in trained)
    assert abs(xi.mean() - xt.mean()) > 3 * max(xi.std(), xt.std())
    # the unaligned pairs say why instead of showing numbers
    at.selectbox(key="compare_pair_a").set_value("gap-convirt").run()
    at.selectbox(key="compare_pair_b").set_value("demo").run()
    assert any("do not align" in i.value for i in at.info)


def test_most_different_cell_on_a_hand_built_table():
    table = {"dim": [64, 512, 64],                  # a setting: never "most different"
             "image.shell_radius": [10.0, 10.5, 10.2],
             "image.hubness.skew": [0.5, 0.6, 3.0],
             "text.shell_radius": [1.0, None, 1.0]}
    assert C.most_different(table) == ("image.hubness.skew", 2)
    assert C.outlier_column([1.0, 5.0, 1.1]) == 1
    assert C.spread([2.0, 4.0]) == pytest.approx(2.0)          # a fold
    assert C.spread([-1.0, 1.0]) == pytest.approx(3.0)          # signed: 1 + range/max|v|
    assert C.spread([1.0, None]) is None
    # a radius 1,000 times smaller beats a sign flip of a cosine
    assert C.most_different({"image.shell_radius": [0.004, 14.0, 15.0],
                             "modality_gap.mean_cosine": [-0.1, 0.6, 0.5]}) \
        == ("image.shell_radius", 0)


def test_every_control_changes_without_errors(bundled_home):
    at = _pick(open_page(PAGE), ["demo@0", "demo@400", "demo@2000"])
    changed = change_every_control(at, skip=("compare_sides",))
    assert {"compare_tau_mode", "compare_scale", "compare_alpha_mod", "compare_k",
            "compare_pair_mod", "compare_spec_mod"} <= set(changed)
