"""The demo world: procedurally generated pictures of shapes and their captions.

Why a generated world
---------------------
The bundled demo trains a small CLIP (open_clip) from scratch on CPU. Real
photographs would need downloads and give no ground truth; here every
concept's frequency and the truth of every caption are known exactly, so the
dashboard can check the paper's claims against the generator (e.g. the
Double-Ellipsoid paper's Prediction 1: common concepts lie closer to the
modality mean, i.e. have higher conformity).

A scene
-------
A ``size`` x ``size`` RGB picture (64 px by default) divided into a 3 x 3
grid. It holds 1 to 3 objects (``WorldConfig.n_objects_probs``, by default
0.5 / 0.35 / 0.15), each in its own grid cell, on a plain background.
Each object (:class:`Obj`) has

* a **shape** from :data:`SHAPES` (circle, square, triangle, star, cross,
  ring, diamond, crescent),
* a **colour** from :data:`COLOURS` (red, green, blue, yellow, purple,
  orange, white, black),
* a **size** (small, large), a **position** (one of the 9 cells: top left,
  top, top right, left, centre, right, bottom left, bottom, bottom right)
  and a **texture** (plain, striped, dotted),
* and, for variety only, a small offset inside its cell and a +-8 % scale
  jitter (never mentioned in captions).

The **background** is light, grey or dark grey; every colour differs from
every background by at least ~50 levels in some channel.

Skewed concept frequencies
--------------------------
Shapes and colours follow Zipf laws: the concept of rank k (k = 1..8) has
probability ``k**-s / sum_j j**-s`` with ``s = 1.1``, where the ranking is a
seeded permutation of the vocabulary (``WorldConfig.prior_seed``, separate
from the sampling seed, so worlds generated with different seeds, e.g. a train
and a test world, share the same priors). The most common shape is ~10x as
frequent as the rarest. Sizes, textures, backgrounds and the number of
objects have fixed probabilities; positions are uniform (each object's cell
is drawn without replacement, so each cell has marginal probability 1/9).
:func:`concept_probabilities` returns every probability exactly.

Captions
--------
A caption is a string *and* a structure (:class:`Caption`: up to two
:class:`ObjectQuery` partial object descriptions, a relation between them,
an optional background) so its truth on any scene is checkable
(:func:`caption_is_true`) and :func:`parse_caption` maps every generated
string back to its structure. Detail levels (``Caption.level``):

====  ===================================================================
0     ``a shape`` / ``two shapes`` (count forms: *exactly* that many)
1     ``a circle``, ``a red shape``, ``three circles``
2     ``a red circle``, ``two red circles``
3     ``a small red circle``, ``a large striped blue star``
4     ``a small red circle at the top left``
5     ``a small red circle at the top left and a blue square``
6     ``a small red circle at the top left next to a large blue square at
      the bottom`` (relations: next to, above, below, to the left of, to
      the right of)
====  ===================================================================

From level 2 up a caption may end with ``on a dark background``. Levels are
drawn per caption from ``WorldConfig.level_probs`` (skewed towards 2-3);
levels 5-6 need two objects, so one-object scenes draw from levels 0-4
renormalised; the captions of one image use different levels where possible.
About 2 % of captions (``WorldConfig.odd_rate``) are deliberately odd
("i am not sure what this is", "an abstract picture", ...), as the
Double-Ellipsoid paper (Fig. 14) finds the largest-norm CLIP captions are
odd ones. They are flagged (``World.odd``, level -1), make no checkable
claim and are by definition **true of no scene**: exclude them from
accuracy metrics.

Truth: a description with count 1 ("a red circle") is true of a scene that
has at least one object with every attribute it names (any others); count n
("two circles") means exactly n such objects. Two descriptions need two
*different* objects, one for each, in the stated relation ("and": any two;
"next to": neighbouring cells, diagonals included; "above"/"below": a
higher/lower row; "to the left of"/"to the right of": a column further
left/right). A named background must be the scene's.

Everything is deterministic: the same seed gives identical pixels and
captions; :func:`render` depends on the scene alone.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass, field
from functools import lru_cache

import numpy as np
import pandas as pd
from PIL import Image, ImageChops, ImageDraw

from ..errors import InputError

__all__ = [
    "SHAPES", "COLOURS", "SIZES", "POSITIONS", "TEXTURES", "BACKGROUNDS",
    "RELATIONS", "ODD_CAPTIONS", "COLOUR_RGB", "BACKGROUND_RGB", "LEVELS",
    "Obj", "Scene", "ObjectQuery", "Caption", "WorldConfig", "World",
    "concept_probabilities", "render", "caption_text", "parse_caption",
    "caption_is_true", "caption_level", "caption_frequency", "generate",
]

# ---------------------------------------------------------------------------
# Vocabulary
# ---------------------------------------------------------------------------

SHAPES = ("circle", "square", "triangle", "star", "cross", "ring", "diamond",
          "crescent")
COLOURS = ("red", "green", "blue", "yellow", "purple", "orange", "white",
           "black")
SIZES = ("small", "large")
POSITIONS = ("top left", "top", "top right",
             "left", "centre", "right",
             "bottom left", "bottom", "bottom right")   # row-major 3 x 3 grid
TEXTURES = ("plain", "striped", "dotted")
BACKGROUNDS = ("light", "grey", "dark")
RELATIONS = ("and", "next to", "above", "below", "to the left of",
             "to the right of")
LEVELS = tuple(range(7))

ODD_CAPTIONS = (
    "i am not sure what this is",
    "an abstract picture",
    "a photo of something",
    "something strange happened here",
    "it is hard to say",
    "a picture of nothing in particular",
    "what is this supposed to be",
    "just some stuff",
)

COLOUR_RGB = {
    "red": (220, 40, 40),
    "green": (40, 170, 60),
    "blue": (40, 90, 230),
    "yellow": (245, 215, 40),
    "purple": (150, 60, 200),
    "orange": (250, 140, 20),
    "white": (252, 252, 252),
    "black": (12, 12, 12),
}
BACKGROUND_RGB = {
    "light": (198, 198, 198),
    "grey": (128, 128, 128),
    "dark": (62, 62, 62),
}

_POSITION_PHRASE = {
    "top left": "at the top left", "top": "at the top",
    "top right": "at the top right", "left": "on the left",
    "centre": "in the centre", "right": "on the right",
    "bottom left": "at the bottom left", "bottom": "at the bottom",
    "bottom right": "at the bottom right",
}
_PHRASE_POSITION = {v: k for k, v in _POSITION_PHRASE.items()}
_PLURAL = {s: (s + "es" if s.endswith(("s", "x")) else s + "s")
           for s in SHAPES + ("shape",)}
_SINGULAR = {v: k for k, v in _PLURAL.items()}
_NUMBER_WORDS = {2: "two", 3: "three"}
_WORD_NUMBERS = {v: k for k, v in _NUMBER_WORDS.items()}
_MENTIONED_TEXTURES = ("striped", "dotted")


# ---------------------------------------------------------------------------
# Scenes
# ---------------------------------------------------------------------------

@dataclass(frozen=True)
class Obj:
    """One object in a scene.

    ``dx``, ``dy`` in [-1, 1] move the object inside its cell (as a fraction of
    the free room) and ``scale`` jitters its size; they add visual variety and
    are never mentioned in captions.
    """
    shape: str
    colour: str
    size: str
    position: str
    texture: str = "plain"
    dx: float = 0.0
    dy: float = 0.0
    scale: float = 1.0


@dataclass(frozen=True)
class Scene:
    """1 to 3 objects in distinct grid cells on a background."""
    objects: tuple[Obj, ...]
    background: str = "grey"

    def __post_init__(self):
        object.__setattr__(self, "objects", tuple(self.objects))


def _check_scene(scene: Scene) -> None:
    if not isinstance(scene, Scene):
        raise InputError(f"Expected a Scene, got {type(scene).__name__}.")
    if scene.background not in BACKGROUNDS:
        raise InputError(f"Unknown background {scene.background!r}; "
                         f"use one of {', '.join(BACKGROUNDS)}.")
    seen = set()
    for o in scene.objects:
        for name, val, vocab in (("shape", o.shape, SHAPES),
                                 ("colour", o.colour, COLOURS),
                                 ("size", o.size, SIZES),
                                 ("position", o.position, POSITIONS),
                                 ("texture", o.texture, TEXTURES)):
            if val not in vocab:
                raise InputError(f"Unknown {name} {val!r}; use one of "
                                 f"{', '.join(vocab)}.")
        if o.position in seen:
            raise InputError(f"Two objects share the cell {o.position!r}; "
                             "each object needs its own grid cell.")
        seen.add(o.position)


# ---------------------------------------------------------------------------
# Configuration and priors
# ---------------------------------------------------------------------------

@dataclass(frozen=True)
class WorldConfig:
    """Knobs of the generator (all probabilities are normalised on use).

    ``prior_seed`` fixes which shapes/colours are common (the Zipf ranking);
    the ``seed`` of :func:`generate` only draws scenes and captions.
    ``level_probs`` weighs detail levels 0..6.
    """
    zipf_exponent: float = 1.1
    prior_seed: int = 0
    n_objects_probs: tuple[float, ...] = (0.5, 0.35, 0.15)
    size_probs: tuple[float, ...] = (0.5, 0.5)
    texture_probs: tuple[float, ...] = (0.6, 0.25, 0.15)
    background_probs: tuple[float, ...] = (0.4, 0.35, 0.25)
    level_probs: tuple[float, ...] = (0.05, 0.15, 0.25, 0.22, 0.15, 0.10, 0.08)
    odd_rate: float = 0.02
    plural_rate: float = 0.3
    texture_mention_rate: float = 0.6
    background_mention_rate: float = 0.2

    def validate(self) -> None:
        def probs(name, p, n):
            a = np.asarray(p, dtype=float)
            if a.shape != (n,) or not np.all(np.isfinite(a)) or np.any(a < 0) \
                    or a.sum() <= 0:
                raise InputError(f"WorldConfig.{name} must be {n} non-negative "
                                 f"numbers with a positive sum, got {p!r}.")
        probs("n_objects_probs", self.n_objects_probs, 3)
        probs("size_probs", self.size_probs, len(SIZES))
        probs("texture_probs", self.texture_probs, len(TEXTURES))
        probs("background_probs", self.background_probs, len(BACKGROUNDS))
        probs("level_probs", self.level_probs, len(LEVELS))
        if sum(self.level_probs[:5]) <= 0:
            raise InputError("WorldConfig.level_probs needs weight on some level "
                             "0-4 (one-object scenes cannot use levels 5-6).")
        for name in ("odd_rate", "plural_rate", "texture_mention_rate",
                     "background_mention_rate"):
            v = getattr(self, name)
            if not 0.0 <= v <= 1.0:
                raise InputError(f"WorldConfig.{name} must lie in [0, 1], got {v}.")
        if not np.isfinite(self.zipf_exponent) or self.zipf_exponent < 0:
            raise InputError("WorldConfig.zipf_exponent must be a non-negative "
                             f"number, got {self.zipf_exponent}.")


def _normalised(p) -> np.ndarray:
    a = np.asarray(p, dtype=float)
    return a / a.sum()


def _zipf(vocab: tuple[str, ...], exponent: float, seed: int, family: int
          ) -> dict[str, float]:
    rng = np.random.default_rng([seed, family, 0x5A1F])
    order = rng.permutation(len(vocab))            # order[r] = index of rank r+1
    w = np.arange(1, len(vocab) + 1, dtype=float) ** -exponent
    w /= w.sum()
    probs = np.empty(len(vocab))
    probs[order] = w
    return {v: float(p) for v, p in zip(vocab, probs)}


@lru_cache(maxsize=32)
def _probabilities(config: WorldConfig) -> dict[str, dict]:
    config.validate()
    return {
        "shape": _zipf(SHAPES, config.zipf_exponent, config.prior_seed, 1),
        "colour": _zipf(COLOURS, config.zipf_exponent, config.prior_seed, 2),
        "size": dict(zip(SIZES, _normalised(config.size_probs).tolist())),
        "texture": dict(zip(TEXTURES, _normalised(config.texture_probs).tolist())),
        "background": dict(zip(BACKGROUNDS,
                               _normalised(config.background_probs).tolist())),
        "position": {p: 1.0 / len(POSITIONS) for p in POSITIONS},
        "n_objects": dict(zip((1, 2, 3),
                              _normalised(config.n_objects_probs).tolist())),
        "level": dict(zip(LEVELS, _normalised(config.level_probs).tolist())),
    }


def concept_probabilities(config: WorldConfig | None = None) -> dict[str, dict]:
    """The generator's exact prior probabilities, family -> {concept: p}.

    Families: ``shape`` and ``colour`` (Zipf, exponent ``zipf_exponent``, over
    a permutation seeded by ``prior_seed``), ``size``, ``texture``,
    ``background``, ``position`` (1/9 each: the marginal of every object),
    ``n_objects`` (1, 2, 3) and ``level`` (detail level weights before the
    one-object restriction). Each object's shape, colour, size and texture
    are independent draws. Returns a fresh copy.
    """
    probs = _probabilities(config or WorldConfig())
    return {k: dict(v) for k, v in probs.items()}


# ---------------------------------------------------------------------------
# Rendering
# ---------------------------------------------------------------------------

_SS = 4                  # supersampling factor
_SCALE = {"small": 0.50, "large": 0.82}   # object diameter / cell side
_MARGIN = 0.04           # fraction of a cell kept free at the cell border


def _mark_rgb(rgb) -> tuple[int, int, int]:
    """Colour of stripes/dots: darker shade, or lighter for dark colours."""
    r, g, b = rgb
    lum = (0.299 * r + 0.587 * g + 0.114 * b) / 255.0
    if lum > 0.3:
        return tuple(int(round(c * 0.42)) for c in rgb)
    return tuple(int(round(c + (255 - c) * 0.55)) for c in rgb)


_MARK_RGB = {c: _mark_rgb(rgb) for c, rgb in COLOUR_RGB.items()}


@lru_cache(maxsize=16)
def _pattern(kind: str, side: int, size: int) -> Image.Image:
    """Full-canvas stripe/dot mask (mode 'L') at supersampled resolution."""
    period = max(3, int(round(size / 16))) * _SS     # ~4 output pixels at 64 px
    yy, xx = np.mgrid[0:side, 0:side]
    if kind == "striped":
        m = ((xx + yy) % period) < int(period * 0.4)  # diagonal stripes
    else:
        cx = (xx % period) - period / 2 + 0.5
        cy = (yy % period) - period / 2 + 0.5
        m = cx * cx + cy * cy <= (period * 0.3) ** 2
    return Image.fromarray((m * 255).astype(np.uint8), mode="L")


def _draw_shape(draw: ImageDraw.ImageDraw, shape: str, cx: float, cy: float,
                r: float) -> None:
    """Draw ``shape`` (fill 255, holes 0) centred at (cx, cy), radius r."""
    if shape == "circle":
        draw.ellipse((cx - r, cy - r, cx + r, cy + r), fill=255)
    elif shape == "ring":
        draw.ellipse((cx - r, cy - r, cx + r, cy + r), fill=255)
        ri = 0.52 * r
        draw.ellipse((cx - ri, cy - ri, cx + ri, cy + ri), fill=0)
    elif shape == "square":
        h = 0.84 * r
        draw.rectangle((cx - h, cy - h, cx + h, cy + h), fill=255)
    elif shape == "diamond":
        draw.polygon([(cx, cy - r), (cx + 0.68 * r, cy), (cx, cy + r),
                      (cx - 0.68 * r, cy)], fill=255)
    elif shape == "triangle":
        c = cy + 0.14 * r
        pts = [(cx + 1.05 * r * np.cos(a), c + 1.05 * r * np.sin(a))
               for a in np.deg2rad([-90.0, 30.0, 150.0])]
        draw.polygon(pts, fill=255)
    elif shape == "star":
        pts = []
        for k in range(10):
            rad = r * (1.05 if k % 2 == 0 else 0.45)
            a = np.deg2rad(-90.0 + 36.0 * k)
            pts.append((cx + rad * np.cos(a), cy + 0.06 * r + rad * np.sin(a)))
        draw.polygon(pts, fill=255)
    elif shape == "cross":
        w = 0.32 * r
        draw.rectangle((cx - r, cy - w, cx + r, cy + w), fill=255)
        draw.rectangle((cx - w, cy - r, cx + w, cy + r), fill=255)
    elif shape == "crescent":
        draw.ellipse((cx - r, cy - r, cx + r, cy + r), fill=255)
        ox, oy, ri = cx + 0.45 * r, cy - 0.18 * r, 0.82 * r
        draw.ellipse((ox - ri, oy - ri, ox + ri, oy + ri), fill=0)
    else:  # pragma: no cover - validated before
        raise InputError(f"Unknown shape {shape!r}.")


def _clip(v, lo: float, hi: float) -> float:
    return min(hi, max(lo, float(v)))


def render(scene: Scene, size: int = 64) -> Image.Image:
    """Draw ``scene`` as a ``size`` x ``size`` RGB image.

    Drawn at 4x resolution and box-filtered down (antialiasing).
    Deterministic: the pixels depend on the scene and ``size`` only.
    """
    _check_scene(scene)
    if not isinstance(size, (int, np.integer)) or size < 16:
        raise InputError(f"Image size must be an integer >= 16 pixels, got {size!r}.")
    size = int(size)
    side = size * _SS
    cell = side / 3.0
    img = Image.new("RGB", (side, side), BACKGROUND_RGB[scene.background])
    mask = Image.new("L", (side, side), 0)
    draw = ImageDraw.Draw(mask)
    for o in scene.objects:
        row, col = divmod(POSITIONS.index(o.position), 3)
        r = 0.5 * cell * _SCALE[o.size] * _clip(o.scale, 0.8, 1.2)
        room = max(0.0, 0.5 * cell - r - _MARGIN * cell)
        cx = (col + 0.5) * cell + _clip(o.dx, -1.0, 1.0) * room
        cy = (row + 0.5) * cell + _clip(o.dy, -1.0, 1.0) * room
        # only touch the object's own cell: cheap and keeps objects apart
        box = (int(col * cell), int(row * cell),
               int(min(side, (col + 1) * cell + 1)), int(min(side, (row + 1) * cell + 1)))
        draw.rectangle(box, fill=0)
        _draw_shape(draw, o.shape, cx, cy, r)
        img.paste(COLOUR_RGB[o.colour], box, mask.crop(box))
        if o.texture != "plain":
            pat = _pattern(o.texture, side, size).crop(box)
            img.paste(_MARK_RGB[o.colour], box,
                      ImageChops.multiply(mask.crop(box), pat))
    return img.reduce(_SS)


# ---------------------------------------------------------------------------
# Captions as structures
# ---------------------------------------------------------------------------

@dataclass(frozen=True)
class ObjectQuery:
    """A partial object description; ``None`` means "any".

    ``count`` 1 reads "a ..." (at least one such object); 2 or 3 read
    "two ..."/"three ..." (exactly that many).
    """
    shape: str | None = None
    colour: str | None = None
    size: str | None = None
    texture: str | None = None
    position: str | None = None
    count: int = 1

    def matches(self, o: Obj) -> bool:
        return ((self.shape is None or o.shape == self.shape)
                and (self.colour is None or o.colour == self.colour)
                and (self.size is None or o.size == self.size)
                and (self.texture is None or o.texture == self.texture)
                and (self.position is None or o.position == self.position))


@dataclass(frozen=True)
class Caption:
    """A caption's structure: 1-2 object descriptions and a relation.

    ``relation`` is one of :data:`RELATIONS` when there are two descriptions
    and None otherwise. ``odd`` holds the text of a deliberately odd caption
    (then ``objects`` is empty): true of no scene.
    """
    objects: tuple[ObjectQuery, ...] = (ObjectQuery(),)
    relation: str | None = None
    background: str | None = None
    odd: str | None = None

    def __post_init__(self):
        object.__setattr__(self, "objects", tuple(self.objects))

    @property
    def is_odd(self) -> bool:
        return self.odd is not None

    @property
    def level(self) -> int:
        return caption_level(self)

    @property
    def text(self) -> str:
        return caption_text(self)


def _check_caption(c: Caption) -> None:
    if not isinstance(c, Caption):
        raise InputError(f"Expected a Caption, got {type(c).__name__}.")
    if c.odd is not None:
        if c.odd not in ODD_CAPTIONS or c.objects or c.relation or c.background:
            raise InputError(f"An odd caption must be one of ODD_CAPTIONS with no "
                             f"objects, relation or background: {c!r}.")
        return
    if len(c.objects) not in (1, 2):
        raise InputError(f"A caption describes 1 or 2 objects, got {len(c.objects)}.")
    if (len(c.objects) == 2) != (c.relation is not None):
        raise InputError("A relation is needed exactly when a caption describes "
                         "two objects.")
    if c.relation is not None and c.relation not in RELATIONS:
        raise InputError(f"Unknown relation {c.relation!r}; use one of "
                         f"{', '.join(RELATIONS)}.")
    if c.background is not None and c.background not in BACKGROUNDS:
        raise InputError(f"Unknown background {c.background!r}.")
    for q in c.objects:
        for name, val, vocab in (("shape", q.shape, SHAPES),
                                 ("colour", q.colour, COLOURS),
                                 ("size", q.size, SIZES),
                                 ("texture", q.texture, TEXTURES),
                                 ("position", q.position, POSITIONS)):
            if val is not None and val not in vocab:
                raise InputError(f"Unknown {name} {val!r} in caption query.")
        if q.count not in (1, 2, 3):
            raise InputError(f"Caption counts are 1, 2 or 3, got {q.count}.")
        if q.count > 1 and (len(c.objects) > 1 or q.position is not None):
            raise InputError("Count forms ('two circles') are only used alone "
                             "and without a position.")


def caption_level(c: Caption) -> int:
    """Detail level 0-6 of a caption (see the module docstring); -1 if odd."""
    if c.odd is not None:
        return -1
    if len(c.objects) == 2:
        return 5 if c.relation == "and" else 6
    q = c.objects[0]
    if q.position is not None:
        return 4
    if q.size is not None or q.texture is not None:
        return 3
    return int(q.shape is not None) + int(q.colour is not None)


def _article(word: str) -> str:
    return "an" if word[0] in "aeiou" else "a"


def _query_text(q: ObjectQuery) -> str:
    words = [w for w in (q.size, q.texture, q.colour) if w is not None]
    noun = q.shape or "shape"
    if q.count == 1:
        head = " ".join(words + [noun])
        out = f"{_article(head)} {head}"
    else:
        out = " ".join([_NUMBER_WORDS[q.count]] + words + [_PLURAL[noun]])
    if q.position is not None:
        out += " " + _POSITION_PHRASE[q.position]
    return out


def caption_text(c: Caption) -> str:
    """The caption string of a structure (inverse of :func:`parse_caption`)."""
    _check_caption(c)
    if c.odd is not None:
        return c.odd
    text = _query_text(c.objects[0])
    if len(c.objects) == 2:
        text += f" {c.relation} " + _query_text(c.objects[1])
    if c.background is not None:
        text += f" on a {c.background} background"
    return text


_BG_RE = re.compile(r"^(.*) on a (" + "|".join(BACKGROUNDS) + r") background$")
_REL_RE = re.compile(r" (" + "|".join(sorted(RELATIONS, key=len, reverse=True))
                     + r") (?=an? )")
_POS_RE = re.compile(r"^(.*?) (" + "|".join(
    sorted(_PHRASE_POSITION, key=len, reverse=True)) + r")$")


def _parse_query(text: str, original: str) -> ObjectQuery:
    position = None
    m = _POS_RE.match(text)
    if m:
        text, position = m.group(1), _PHRASE_POSITION[m.group(2)]
    words = text.split()
    if len(words) < 2:
        raise InputError(f"Cannot parse caption {original!r}: expected e.g. "
                         "'a red circle'.")
    first, *mid, noun = words
    if first in ("a", "an"):
        count = 1
        shape = noun if noun in SHAPES else None
        if shape is None and noun != "shape":
            raise InputError(f"Cannot parse caption {original!r}: unknown shape "
                             f"{noun!r}.")
    elif first in _WORD_NUMBERS:
        count = _WORD_NUMBERS[first]
        if noun not in _SINGULAR:
            raise InputError(f"Cannot parse caption {original!r}: expected a plural "
                             f"shape after {first!r}, got {noun!r}.")
        shape = _SINGULAR[noun] if _SINGULAR[noun] != "shape" else None
    else:
        raise InputError(f"Cannot parse caption {original!r}: a description starts "
                         f"with 'a', 'an', 'two' or 'three', not {first!r}.")
    slots = {"size": None, "texture": None, "colour": None}
    order = ["size", "texture", "colour"]
    vocab = {"size": SIZES, "texture": TEXTURES, "colour": COLOURS}
    k = 0
    for w in mid:
        while k < len(order) and w not in vocab[order[k]]:
            k += 1
        if k == len(order):
            raise InputError(f"Cannot parse caption {original!r}: unexpected word "
                             f"{w!r} (order: size, texture, colour, shape).")
        slots[order[k]] = w
        k += 1
    return ObjectQuery(shape=shape, colour=slots["colour"], size=slots["size"],
                       texture=slots["texture"], position=position, count=count)


def parse_caption(text: str) -> Caption:
    """Map a caption string of this world back to its :class:`Caption`.

    Accepts every string the generator writes (round trip:
    ``parse_caption(caption_text(c)) == c``), case and a final full stop
    ignored. Raises :class:`InputError` for anything else.
    """
    if not isinstance(text, str):
        raise InputError(f"A caption must be a string, got {type(text).__name__}.")
    t = " ".join(text.strip().lower().rstrip(".").split())
    if t in ODD_CAPTIONS:
        return Caption(objects=(), odd=t)
    background = None
    m = _BG_RE.match(t)
    if m:
        t, background = m.group(1), m.group(2)
    parts = _REL_RE.split(t)
    if len(parts) == 1:
        objs, relation = (_parse_query(t, text),), None
    elif len(parts) == 3:
        objs = (_parse_query(parts[0], text), _parse_query(parts[2], text))
        relation = parts[1]
    else:
        raise InputError(f"Cannot parse caption {text!r}: at most two objects "
                         "joined by one relation.")
    c = Caption(objects=objs, relation=relation, background=background)
    _check_caption(c)
    return c


def _cell(position: str) -> tuple[int, int]:
    return divmod(POSITIONS.index(position), 3)


def _relation_holds(relation: str, a: Obj, b: Obj) -> bool:
    (ra, ca), (rb, cb) = _cell(a.position), _cell(b.position)
    if relation == "and":
        return True
    if relation == "next to":
        return max(abs(ra - rb), abs(ca - cb)) == 1
    if relation == "above":
        return ra < rb
    if relation == "below":
        return ra > rb
    if relation == "to the left of":
        return ca < cb
    if relation == "to the right of":
        return ca > cb
    raise InputError(f"Unknown relation {relation!r}.")  # pragma: no cover


def caption_is_true(caption: Caption | str, scene: Scene) -> bool:
    """The generator's truth: does ``caption`` describe ``scene``?

    ``caption`` is a :class:`Caption` or a string (parsed). Odd captions are
    true of no scene. See the module docstring for the semantics.
    """
    c = parse_caption(caption) if isinstance(caption, str) else caption
    _check_caption(c)
    _check_scene(scene)
    if c.odd is not None:
        return False
    if c.background is not None and scene.background != c.background:
        return False
    objs = scene.objects
    if len(c.objects) == 1:
        q = c.objects[0]
        n = sum(q.matches(o) for o in objs)
        return n >= 1 if q.count == 1 else n == q.count
    qa, qb = c.objects
    return any(i != j and qa.matches(a) and qb.matches(b)
               and _relation_holds(c.relation, a, b)
               for i, a in enumerate(objs) for j, b in enumerate(objs))


def caption_frequency(c: Caption, config: WorldConfig | None = None) -> float:
    """Prior probability that random objects fit the caption's descriptions.

    The product over descriptions of the product of the named attributes'
    probabilities (unnamed attributes contribute 1; counts are ignored):
    1 for "a shape", p(red) p(circle) for "a red circle". NaN if odd.
    """
    if c.odd is not None:
        return float("nan")
    probs = _probabilities(config or WorldConfig())
    f = 1.0
    for q in c.objects:
        for fam in ("shape", "colour", "size", "texture", "position"):
            v = getattr(q, fam)
            if v is not None:
                f *= probs[fam][v]
    return f


# ---------------------------------------------------------------------------
# Generation
# ---------------------------------------------------------------------------

class _U:
    """Consumes a row of pre-drawn uniforms (fast, deterministic choices)."""
    __slots__ = ("u", "k")

    def __init__(self, u: np.ndarray):
        self.u, self.k = u, 0

    def __call__(self) -> float:
        v = self.u[self.k]
        self.k += 1
        return float(v)

    def bern(self, p: float) -> bool:
        return self() < p

    def pick(self, seq):
        return seq[min(int(self() * len(seq)), len(seq) - 1)]


_N_UNIFORMS = 16


def _describe(scene: Scene, level: int, u: _U, cfg: WorldConfig) -> Caption:
    objs = scene.objects
    ia = u.pick(range(len(objs)))
    a = objs[ia]

    def full(o: Obj, pos_p: float) -> ObjectQuery:
        tex = o.texture if (o.texture != "plain"
                            and u.bern(cfg.texture_mention_rate)) else None
        pos = o.position if u.bern(pos_p) else None
        return ObjectQuery(shape=o.shape, colour=o.colour, size=o.size,
                           texture=tex, position=pos)

    if level <= 2:
        if level == 0:
            q = ObjectQuery()
        elif level == 1:
            q = (ObjectQuery(shape=a.shape) if u.bern(0.7)
                 else ObjectQuery(colour=a.colour))
        else:
            q = ObjectQuery(shape=a.shape, colour=a.colour)
        m = sum(q.matches(o) for o in objs)
        if m >= 2 and u.bern(cfg.plural_rate):
            q = ObjectQuery(shape=q.shape, colour=q.colour, count=m)
        c = Caption(objects=(q,))
    elif level in (3, 4):
        c = Caption(objects=(full(a, 1.0 if level == 4 else 0.0),))
    else:
        others = [o for i, o in enumerate(objs) if i != ia]
        b = u.pick(others)
        if level == 5:
            qa = full(a, 0.6)
            detail = u.pick((1, 2, 3))
            qb = ObjectQuery(shape=b.shape,
                             colour=b.colour if detail >= 2 else None,
                             size=b.size if detail >= 3 else None)
            c = Caption(objects=(qa, qb), relation="and")
        else:
            qa = full(a, 0.5)
            qb = ObjectQuery(shape=b.shape, colour=b.colour,
                             size=b.size if u.bern(0.5) else None,
                             position=b.position if u.bern(0.5) else None)
            rels = [r for r in RELATIONS[1:] if _relation_holds(r, a, b)]
            c = Caption(objects=(qa, qb), relation=u.pick(rels))
    if level >= 2 and u.bern(cfg.background_mention_rate):
        c = Caption(objects=c.objects, relation=c.relation,
                    background=scene.background)
    return c


def _sample_scenes(n: int, rng: np.random.Generator, cfg: WorldConfig
                   ) -> list[Scene]:
    probs = _probabilities(cfg)
    p_shape = np.array([probs["shape"][s] for s in SHAPES])
    p_colour = np.array([probs["colour"][c] for c in COLOURS])
    n_obj = rng.choice(3, size=n, p=_normalised(cfg.n_objects_probs)) + 1
    cells = np.argsort(rng.random((n, 9)), axis=1)[:, :3]
    shapes = rng.choice(len(SHAPES), size=(n, 3), p=p_shape)
    colours = rng.choice(len(COLOURS), size=(n, 3), p=p_colour)
    sizes = rng.choice(len(SIZES), size=(n, 3), p=_normalised(cfg.size_probs))
    textures = rng.choice(len(TEXTURES), size=(n, 3),
                          p=_normalised(cfg.texture_probs))
    bgs = rng.choice(len(BACKGROUNDS), size=n, p=_normalised(cfg.background_probs))
    jit = np.round(rng.uniform(-1, 1, size=(n, 3, 2)), 4)
    scl = np.round(rng.uniform(0.92, 1.08, size=(n, 3)), 4)
    scenes = []
    for i in range(n):
        objs = tuple(
            Obj(SHAPES[shapes[i, k]], COLOURS[colours[i, k]], SIZES[sizes[i, k]],
                POSITIONS[cells[i, k]], TEXTURES[textures[i, k]],
                float(jit[i, k, 0]), float(jit[i, k, 1]), float(scl[i, k]))
            for k in range(n_obj[i]))
        scenes.append(Scene(objs, BACKGROUNDS[bgs[i]]))
    return scenes


def _choose_levels(n_obj: np.ndarray, k: int, rng: np.random.Generator,
                   cfg: WorldConfig) -> np.ndarray:
    """[n, k] detail levels; distinct per image while enough levels are valid.

    Weighted sampling without replacement (exponential keys): the first
    caption's level follows ``level_probs`` (renormalised to 0-4 for
    one-object scenes).
    """
    w = np.tile(_normalised(cfg.level_probs), (len(n_obj), 1))
    w[n_obj < 2, 5:] = 0.0
    u = rng.random(w.shape)
    with np.errstate(divide="ignore"):
        keys = np.where(w > 0, np.log(u) / np.where(w > 0, w, 1.0), -np.inf)
    order = np.argsort(-keys, axis=1, kind="stable")
    n_valid = (w > 0).sum(axis=1)
    cols = np.arange(k)[None, :] % n_valid[:, None]   # cycle if k > valid levels
    return np.take_along_axis(order, cols, axis=1)


@dataclass
class World:
    """A generated world: scenes, captions and their metadata.

    * ``scenes[i]``: the i-th :class:`Scene`;
      :meth:`image` / :meth:`images` render them (lazily).
    * ``captions``: ``captions_per_image`` strings per scene, scene-major
      (caption ``j`` belongs to scene ``caption_image[j]``; the first caption
      of each scene is the one paired analyses use);
      ``caption_structs`` the matching :class:`Caption` structures;
      ``odd`` flags the deliberately odd captions (true of nothing).
    * ``images_meta``: one row per scene: ``image_id``, ``n_objects``,
      ``background``, the objects' ``shapes``/``colours``/``sizes``/
      ``positions``/``textures`` (comma-joined, in object order),
      ``main_shape``/``main_colour`` (object 0), ``shape_frequency`` and
      ``colour_frequency`` (mean prior probability over the objects),
      ``concept_frequency`` (mean over objects of p(shape) * p(colour)), and
      ``main_concept_frequency`` (p(shape) * p(colour) of object 0).
    * ``texts_meta``: one row per caption: ``text_id``, ``caption``,
      ``image_id``, ``level`` (-1 if odd), ``odd``, ``n_descriptions``,
      ``relation``, ``count``, ``background_mentioned``, ``main_shape`` /
      ``main_colour`` (of the first description, None if unnamed),
      ``shape_frequency`` / ``colour_frequency`` (their priors, NaN if
      unnamed) and ``caption_frequency`` (:func:`caption_frequency`).
    * ``probabilities``: :func:`concept_probabilities` of ``config``.
    """
    scenes: list[Scene]
    captions: list[str]
    caption_structs: list[Caption]
    odd: np.ndarray
    caption_image: np.ndarray
    images_meta: pd.DataFrame
    texts_meta: pd.DataFrame
    seed: int
    image_size: int
    captions_per_image: int
    config: WorldConfig = field(default_factory=WorldConfig)
    generate_seconds: float = 0.0

    def __len__(self) -> int:
        return len(self.scenes)

    @property
    def probabilities(self) -> dict[str, dict]:
        return concept_probabilities(self.config)

    def image(self, i: int) -> Image.Image:
        """Render scene ``i`` (PIL RGB, ``image_size`` pixels a side)."""
        if not -len(self) <= i < len(self):
            raise InputError(f"Image index {i} out of range for a world of "
                             f"{len(self)} scenes.")
        return render(self.scenes[i], self.image_size)

    def images(self, indices=None) -> np.ndarray:
        """Render scenes (all, or ``indices``) as uint8 ``[n, H, W, 3]``."""
        idx = range(len(self)) if indices is None else list(indices)
        s = self.image_size
        out = np.empty((len(idx), s, s, 3), dtype=np.uint8)
        for k, i in enumerate(idx):
            out[k] = np.asarray(self.image(i))
        return out

    def truth(self, caption: Caption | str, indices=None) -> np.ndarray:
        """bool array: is ``caption`` true of each scene (or of ``indices``)?"""
        c = parse_caption(caption) if isinstance(caption, str) else caption
        idx = range(len(self)) if indices is None else indices
        return np.array([caption_is_true(c, self.scenes[i]) for i in idx],
                        dtype=bool)


def _images_meta(scenes: list[Scene], probs: dict) -> pd.DataFrame:
    ps, pc = probs["shape"], probs["colour"]
    rows = []
    for i, s in enumerate(scenes):
        o = s.objects
        rows.append({
            "image_id": f"{i:06d}",
            "n_objects": len(o),
            "background": s.background,
            "shapes": ",".join(x.shape for x in o),
            "colours": ",".join(x.colour for x in o),
            "sizes": ",".join(x.size for x in o),
            "positions": ",".join(x.position for x in o),
            "textures": ",".join(x.texture for x in o),
            "main_shape": o[0].shape,
            "main_colour": o[0].colour,
            "shape_frequency": float(np.mean([ps[x.shape] for x in o])),
            "colour_frequency": float(np.mean([pc[x.colour] for x in o])),
            "concept_frequency": float(np.mean([ps[x.shape] * pc[x.colour]
                                                for x in o])),
            "main_concept_frequency": ps[o[0].shape] * pc[o[0].colour],
        })
    return pd.DataFrame(rows)


def _texts_meta(structs: list[Caption], texts: list[str], caption_image,
                image_ids: list[str], cfg: WorldConfig) -> pd.DataFrame:
    probs = _probabilities(cfg)
    k_of: dict[int, int] = {}
    rows = []
    for j, (c, t) in enumerate(zip(structs, texts)):
        i = int(caption_image[j])
        k = k_of.get(i, 0)
        k_of[i] = k + 1
        q = c.objects[0] if c.objects else None
        rows.append({
            "text_id": f"{image_ids[i]}-{k}",
            "caption": t,
            "image_id": image_ids[i],
            "level": caption_level(c),
            "odd": c.is_odd,
            "n_descriptions": len(c.objects),
            "relation": c.relation,
            "count": q.count if q else 0,
            "background_mentioned": c.background is not None,
            "main_shape": q.shape if q else None,
            "main_colour": q.colour if q else None,
            "shape_frequency": probs["shape"][q.shape] if q and q.shape
            else float("nan"),
            "colour_frequency": probs["colour"][q.colour] if q and q.colour
            else float("nan"),
            "caption_frequency": caption_frequency(c, cfg),
        })
    return pd.DataFrame(rows)


def generate(n: int, *, seed: int = 0, image_size: int = 64,
             captions_per_image: int = 1, config: WorldConfig | None = None
             ) -> World:
    """Generate ``n`` scenes with ``captions_per_image`` captions each.

    Scenes and captions come from independent streams of ``seed`` (changing
    ``captions_per_image`` leaves the scenes unchanged); priors come from
    ``config.prior_seed``. Images are rendered on demand
    (:meth:`World.image`, :meth:`World.images`).
    """
    t0 = time.perf_counter()
    cfg = config or WorldConfig()
    cfg.validate()
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 1:
        raise InputError(f"The number of scenes must be a positive integer, got {n!r}.")
    if isinstance(captions_per_image, bool) or \
            not isinstance(captions_per_image, (int, np.integer)) or \
            captions_per_image < 1:
        raise InputError("captions_per_image must be a positive integer, got "
                         f"{captions_per_image!r}.")
    if not isinstance(image_size, (int, np.integer)) or image_size < 16:
        raise InputError(f"image_size must be an integer >= 16, got {image_size!r}.")
    if not isinstance(seed, (int, np.integer)) or seed < 0:
        raise InputError(f"seed must be a non-negative integer, got {seed!r}.")
    n, k = int(n), int(captions_per_image)
    scene_ss, cap_ss = np.random.SeedSequence([int(seed), 0xC11F]).spawn(2)
    scenes = _sample_scenes(n, np.random.default_rng(scene_ss), cfg)

    rng = np.random.default_rng(cap_ss)
    n_obj = np.array([len(s.objects) for s in scenes])
    levels = _choose_levels(n_obj, k, rng, cfg)
    odd_draw = rng.random((n, k))
    odd_pick = rng.integers(0, len(ODD_CAPTIONS), size=(n, k))
    uniforms = rng.random((n, k, _N_UNIFORMS))
    structs: list[Caption] = []
    for i, s in enumerate(scenes):
        for j in range(k):
            if odd_draw[i, j] < cfg.odd_rate:
                structs.append(Caption(objects=(),
                                       odd=ODD_CAPTIONS[odd_pick[i, j]]))
            else:
                structs.append(_describe(s, int(levels[i, j]),
                                         _U(uniforms[i, j]), cfg))
    texts = [caption_text(c) for c in structs]
    caption_image = np.repeat(np.arange(n), k)
    probs = _probabilities(cfg)
    images_meta = _images_meta(scenes, probs)
    texts_meta = _texts_meta(structs, texts, caption_image,
                             images_meta["image_id"].tolist(), cfg)
    return World(scenes=scenes, captions=texts, caption_structs=structs,
                 odd=np.array([c.is_odd for c in structs], dtype=bool),
                 caption_image=caption_image, images_meta=images_meta,
                 texts_meta=texts_meta, seed=int(seed), image_size=int(image_size),
                 captions_per_image=k, config=cfg,
                 generate_seconds=time.perf_counter() - t0)
