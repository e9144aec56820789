"""The generated demo world: determinism, priors, caption truth, rendering.

Ground truth comes from hand-built scenes and captions, the Zipf formula
computed here, and pixel colours of known shapes, not from the generator's
own bookkeeping.
"""

import hashlib
import time
from collections import Counter

import numpy as np
import pytest

from clipgeom.demo import world as W
from clipgeom.demo.world import (BACKGROUND_RGB, COLOUR_RGB, COLOURS, SHAPES,
                                 Caption, Obj, ObjectQuery, Scene, WorldConfig,
                                 caption_is_true, caption_text,
                                 concept_probabilities, generate, parse_caption,
                                 render)
from clipgeom.errors import InputError


@pytest.fixture(scope="module")
def world3():
    return generate(1500, seed=7, captions_per_image=3)


@pytest.fixture(scope="module")
def big():
    return generate(5000, seed=11)


# --------------------------------------------------------------------------
# determinism
# --------------------------------------------------------------------------

def test_same_seed_same_world_different_seed_different():
    a = generate(40, seed=3, captions_per_image=2)
    b = generate(40, seed=3, captions_per_image=2)
    c = generate(40, seed=4, captions_per_image=2)
    assert a.captions == b.captions
    assert a.scenes == b.scenes
    ia, ib, ic = a.images(), b.images(), c.images()
    assert ia.dtype == np.uint8 and ia.shape == (40, 64, 64, 3)
    assert np.array_equal(ia, ib)
    assert not np.array_equal(ia, ic)
    assert a.captions != c.captions
    assert a.images_meta.equals(b.images_meta)
    assert a.texts_meta.equals(b.texts_meta)
    # render depends on the scene only
    assert np.array_equal(np.asarray(render(a.scenes[5])), ia[5])
    assert np.array_equal(np.asarray(a.image(5)), ia[5])


def test_scenes_independent_of_captions_per_image():
    a = generate(30, seed=1, captions_per_image=1)
    b = generate(30, seed=1, captions_per_image=4)
    assert a.scenes == b.scenes
    assert len(b.captions) == 120
    assert list(b.caption_image[:8]) == [0, 0, 0, 0, 1, 1, 1, 1]


# --------------------------------------------------------------------------
# priors
# --------------------------------------------------------------------------

def test_probabilities_are_zipf_over_a_permutation():
    probs = concept_probabilities()
    ranks = np.arange(1, 9, dtype=float)
    zipf = ranks ** -1.1 / np.sum(ranks ** -1.1)
    for fam, vocab in (("shape", SHAPES), ("colour", COLOURS)):
        p = probs[fam]
        assert set(p) == set(vocab)
        assert np.allclose(sorted(p.values(), reverse=True), zipf)
    assert probs["position"]["centre"] == pytest.approx(1 / 9)
    for fam in probs:
        assert sum(probs[fam].values()) == pytest.approx(1.0)
    # the ranking is seeded by prior_seed, not by the sampling seed
    other = concept_probabilities(WorldConfig(prior_seed=5))
    assert other["shape"] != probs["shape"] or other["colour"] != probs["colour"]
    assert generate(5, seed=9).probabilities == probs


def test_zipf_skew_empirical(big):
    probs = concept_probabilities()["shape"]
    shapes = Counter(o.shape for s in big.scenes for o in s.objects)
    n = sum(shapes.values())
    top = max(probs, key=probs.get)
    rare = min(probs, key=probs.get)
    f_top, f_rare = shapes[top] / n, shapes[rare] / n
    sd = np.sqrt(probs[top] * (1 - probs[top]) / n)
    assert abs(f_top - probs[top]) < 5 * sd
    assert f_top > 3 * f_rare
    # every shape's empirical frequency near its prior
    for s in SHAPES:
        assert abs(shapes[s] / n - probs[s]) < 0.02
    colours = Counter(o.colour for s in big.scenes for o in s.objects)
    pc = concept_probabilities()["colour"]
    assert max(colours, key=colours.get) == max(pc, key=pc.get)
    n_obj = Counter(len(s.objects) for s in big.scenes)
    assert n_obj[1] / 5000 == pytest.approx(0.5, abs=0.03)
    assert n_obj[3] / 5000 == pytest.approx(0.15, abs=0.03)


def test_images_meta_frequencies(big):
    probs = concept_probabilities()
    m = big.images_meta
    assert len(m) == 5000 and m["image_id"].is_unique
    for i in (0, 17, 4999):
        objs = big.scenes[i].objects
        expect = np.mean([probs["shape"][o.shape] * probs["colour"][o.colour]
                          for o in objs])
        assert m.loc[i, "concept_frequency"] == pytest.approx(expect)
        assert m.loc[i, "n_objects"] == len(objs)
        assert m.loc[i, "shapes"].split(",") == [o.shape for o in objs]
        assert m.loc[i, "shape_frequency"] == pytest.approx(
            np.mean([probs["shape"][o.shape] for o in objs]))


def test_texts_meta(world3):
    t = world3.texts_meta
    assert len(t) == 4500 and t["text_id"].is_unique
    assert (t["caption"] == world3.captions).all()
    assert (t["odd"].to_numpy() == world3.odd).all()
    assert (t.loc[t["odd"], "level"] == -1).all()
    probs = concept_probabilities()
    for j in range(60):
        c = world3.caption_structs[j]
        if c.is_odd:
            assert np.isnan(t.loc[j, "caption_frequency"])
            continue
        f = 1.0
        for q in c.objects:
            if q.shape:
                f *= probs["shape"][q.shape]
            if q.colour:
                f *= probs["colour"][q.colour]
            if q.size:
                f *= 0.5
            if q.texture:
                f *= probs["texture"][q.texture]
            if q.position:
                f /= 9
        assert t.loc[j, "caption_frequency"] == pytest.approx(f)
    assert W.caption_frequency(parse_caption("a shape")) == 1.0


# --------------------------------------------------------------------------
# captions: truth on hand-built scenes
# --------------------------------------------------------------------------

RED_CIRCLE = Obj("circle", "red", "small", "top left", "striped")
BLUE_SQUARE = Obj("square", "blue", "large", "bottom", "plain")
RED_STAR = Obj("star", "red", "large", "centre", "dotted")
SCENE = Scene((RED_CIRCLE, BLUE_SQUARE), "dark")


@pytest.mark.parametrize("text,truth", [
    # level 0
    ("a shape", True), ("two shapes", True), ("three shapes", False),
    # level 1
    ("a circle", True), ("a star", False), ("a red shape", True),
    ("a green shape", False), ("two circles", False),
    # level 2
    ("a red circle", True), ("a blue circle", False), ("a blue square", True),
    ("a red square", False),
    # level 3
    ("a small red circle", True), ("a large red circle", False),
    ("a small striped red circle", True), ("a small dotted red circle", False),
    ("a large plain blue square", True), ("a large striped blue square", False),
    # level 4
    ("a small red circle at the top left", True),
    ("a small red circle at the top", False),
    ("a large blue square at the bottom", True),
    ("a large blue square at the bottom right", False),
    # level 5
    ("a small red circle at the top left and a blue square", True),
    ("a small red circle and a circle", False),       # needs two circles
    ("a large blue square and a red shape", True),
    ("a small red circle and a green square", False),
    # level 6
    ("a small red circle at the top left next to a large blue square at the bottom",
     False),                                          # not neighbouring cells
    ("a small red circle above a blue square", True),
    ("a small red circle below a blue square", False),
    ("a large blue square below a red circle", True),
    ("a small red circle to the left of a blue square", True),
    ("a small red circle to the right of a blue square", False),
    ("a blue square to the right of a red circle", True),
    # background
    ("a red circle on a dark background", True),
    ("a red circle on a light background", False),
    # odd captions are true of nothing
    ("an abstract picture", False), ("i am not sure what this is", False),
])
def test_caption_truth_hand_built(text, truth):
    assert caption_is_true(text, SCENE) is truth
    assert caption_is_true(parse_caption(text), SCENE) is truth


def test_relations_next_to_and_counts():
    a = Obj("circle", "red", "small", "centre")
    b = Obj("circle", "red", "large", "top right")       # diagonal neighbour
    c = Obj("cross", "white", "small", "bottom left")
    s = Scene((a, b, c), "light")
    assert caption_is_true("a small red circle next to a large red circle", s)
    assert caption_is_true("a red circle next to a red circle", s)   # a, b
    assert caption_is_true("a white cross next to a small red circle", s)
    assert not caption_is_true("a white cross next to a large red circle", s)
    assert caption_is_true("two red circles", s)
    assert caption_is_true("two circles", s)
    assert not caption_is_true("three circles", s)
    assert caption_is_true("three shapes", s)
    assert not caption_is_true("two shapes", s)          # exactly two
    assert caption_is_true("a circle", s)                 # at least one
    assert caption_is_true("a red circle above a white cross", s)
    assert caption_is_true("a white cross to the left of a red circle", s)
    one = Scene((a,), "grey")
    assert not caption_is_true("a circle and a circle", one)
    assert not caption_is_true("a red circle next to a circle", one)


def test_ring_is_not_circle_and_caption_levels():
    s = Scene((Obj("ring", "black", "large", "left"),), "light")
    assert not caption_is_true("a circle", s)
    assert caption_is_true("a black ring on the left", s)
    assert caption_is_true("a large black ring on the left", s)
    assert parse_caption("a shape").level == 0
    assert parse_caption("three shapes").level == 0
    assert parse_caption("a ring").level == 1
    assert parse_caption("a black shape").level == 1
    assert parse_caption("two black rings").level == 2
    assert parse_caption("a large black ring").level == 3
    assert parse_caption("a large black ring on the left").level == 4
    assert parse_caption("a large black ring and a star").level == 5
    assert parse_caption("a large black ring above a star").level == 6
    assert parse_caption("a photo of something").level == -1


# --------------------------------------------------------------------------
# parsing
# --------------------------------------------------------------------------

def test_parse_hand_written():
    c = parse_caption("A small striped red circle at the top left next to "
                      "a large blue square at the bottom on a dark background.")
    assert c == Caption(
        objects=(ObjectQuery("circle", "red", "small", "striped", "top left"),
                 ObjectQuery("square", "blue", "large", None, "bottom")),
        relation="next to", background="dark")
    assert parse_caption("an orange star") == Caption(
        (ObjectQuery(shape="star", colour="orange"),))
    assert parse_caption("two crosses") == Caption(
        (ObjectQuery(shape="cross", count=2),))
    assert parse_caption("a circle on the left to the left of a circle on the right"
                         ).relation == "to the left of"
    assert caption_text(parse_caption("an orange star")) == "an orange star"


@pytest.mark.parametrize("bad", [
    "", "a", "a red", "a purple unicorn", "the red circle", "a circle circle",
    "a red small circle", "four circles", "a circle and a square and a star",
    "a circle at the middle", "two circles at the top", 42,
])
def test_parse_rejects(bad):
    with pytest.raises(InputError):
        parse_caption(bad)


def test_parse_round_trips_every_generated_caption(world3):
    for text, c in zip(world3.captions, world3.caption_structs):
        assert parse_caption(text) == c
        assert caption_text(c) == text


def test_every_generated_caption_is_true_of_its_scene(world3):
    n_checked = 0
    for j, c in enumerate(world3.caption_structs):
        s = world3.scenes[world3.caption_image[j]]
        if c.is_odd:
            assert not caption_is_true(c, s)
            continue
        assert caption_is_true(world3.captions[j], s), world3.captions[j]
        n_checked += 1
    assert n_checked > 4000
    # and detailed captions are informative: mostly false of other scenes
    rng = np.random.default_rng(0)
    lv = world3.texts_meta["level"].to_numpy()
    js = np.flatnonzero(lv >= 3)[:300]
    others = rng.integers(0, len(world3), size=len(js))
    hits = [caption_is_true(world3.caption_structs[j], world3.scenes[o])
            for j, o in zip(js, others) if o != world3.caption_image[j]]
    assert np.mean(hits) < 0.2


def test_levels_odd_and_distribution(world3, big):
    t = world3.texts_meta
    n_obj = world3.images_meta["n_objects"].to_numpy()
    lv = t["level"].to_numpy().reshape(-1, 3)
    odd = world3.odd.reshape(-1, 3)
    for i in range(len(world3)):
        levels = lv[i][~odd[i]]
        assert len(set(levels)) == len(levels)          # different detail levels
        if n_obj[i] == 1:
            assert levels.max(initial=0) <= 4
    counts = big.texts_meta["level"].value_counts()
    assert counts.idxmax() in (2, 3)                     # skewed to mid detail
    assert counts[0] < counts[2] and counts[6] < counts[3]
    assert set(counts.index) == {-1, 0, 1, 2, 3, 4, 5, 6}
    all_odd = np.concatenate([world3.odd, big.odd])
    assert all_odd.mean() == pytest.approx(0.02, abs=0.006)
    assert set(np.array(big.captions)[big.odd]) <= set(W.ODD_CAPTIONS)
    assert big.texts_meta["caption"].str.contains(" on a ").any()
    assert big.texts_meta["count"].max() >= 2


# --------------------------------------------------------------------------
# rendering
# --------------------------------------------------------------------------

def test_pixels_of_known_shapes():
    # a large plain object centred in the middle cell: its centre pixel has the
    # object's colour, corners the background; ring and crescent have holes
    for shape in SHAPES:
        obj = Obj(shape, "red", "large", "centre", "plain")
        img = np.asarray(render(Scene((obj,), "light")))
        centre = tuple(img[32, 32])
        assert tuple(img[2, 2]) == BACKGROUND_RGB["light"]
        if shape in ("ring", "crescent"):
            assert centre == BACKGROUND_RGB["light"], shape
        else:
            assert centre == COLOUR_RGB["red"], shape
        # nothing leaks outside the centre cell
        assert (img[:18] == BACKGROUND_RGB["light"]).all()
    small = np.asarray(render(Scene((Obj("square", "blue", "small", "top left"),),
                                    "dark")))
    blue = (small == COLOUR_RGB["blue"]).all(axis=2)
    ys, xs = np.nonzero(blue)
    assert ys.max() < 21 and xs.max() < 21 and 20 < blue.sum() < 150
    striped = np.asarray(render(Scene((Obj("square", "blue", "large", "centre",
                                           "striped"),), "dark")))
    assert len(np.unique(striped[26:38, 26:38].reshape(-1, 3), axis=0)) > 1


def test_images_distinct_not_blank_and_timing():
    t0 = time.perf_counter()
    w = generate(2000, seed=0)
    t1 = time.perf_counter()
    imgs = w.images()
    t2 = time.perf_counter()
    print(f"\ngenerate(2000): {t1 - t0:.2f} s, render: {t2 - t1:.2f} s "
          f"({(t2 - t1) / 2000 * 1e3:.2f} ms/image)")
    assert t2 - t0 < 20
    assert imgs.shape == (2000, 64, 64, 3)
    hashes = {hashlib.sha1(im.tobytes()).hexdigest() for im in imgs}
    assert len(hashes) == 2000
    flat = imgs.reshape(2000, -1, 3)
    for k in range(0, 2000, 50):
        assert len(np.unique(flat[k], axis=0)) > 2     # background + object(s)
    bg = np.array([BACKGROUND_RGB[s.background] for s in w.scenes], dtype=np.uint8)
    non_bg = (imgs != bg[:, None, None, :]).any(axis=3).mean(axis=(1, 2))
    assert non_bg.min() > 0.005


def test_input_errors():
    with pytest.raises(InputError):
        generate(0)
    with pytest.raises(InputError):
        generate(5, captions_per_image=0)
    with pytest.raises(InputError):
        generate(5, config=WorldConfig(n_objects_probs=(1, 0)))
    with pytest.raises(InputError):
        render(Scene((Obj("blob", "red", "small", "top"),)))
    with pytest.raises(InputError):
        render(Scene((Obj("circle", "red", "small", "top"),
                      Obj("star", "red", "small", "top"))))
    with pytest.raises(InputError):
        caption_text(Caption((ObjectQuery(), ObjectQuery())))   # no relation
    with pytest.raises(InputError):
        generate(3).image(3)
