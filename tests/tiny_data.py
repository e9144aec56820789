"""A tiny stored dataset for page tests (20 pairs by default: small enough that
every default must adapt -- k, bins, rows), with markup in its user strings so
tests can check they are shown literally."""

from __future__ import annotations

import numpy as np
import pandas as pd

MARKUP = "**bold** [x](http://e.com) $x^2$"          # caption 0: bold, a link, LaTeX
MARKUP_ID = "**img3** [y](http://e.com)"              # the image id of row 3
# Captions of rows 1, 2, 4 and 5 (caption 3 stays "caption 3").
MARKUP_CAPTIONS = ["**bold** claim", "[click](http://x.invalid)", "# heading",
                   "<b>tag</b> & a_b_c *x*"]
MARKUP_ROWS = (1, 2, 4, 5)
SHARED_CAPTION = "a shape"        # the last 8 rows share it (as in the demo world)
SOURCE_MARKUP = "**src**"         # every image source starts with it
# Every piece of the user strings above that renders (bold, a link, LaTeX,
# a heading, HTML) when passed to markdown unescaped.
USER_MARKUP = ("**bold**", "[x](http", "$x^2$", "**img3**", "[y](http", *MARKUP_CAPTIONS,
               SOURCE_MARKUP)
SNAPSHOT_STEPS = (0, 10)


def tiny_dataset(tmp_path=None, name: str = "tiny20", *, n: int = 20, d: int = 64,
                 seed: int = 5, thumbs: str | None = "even", snapshots: bool = False):
    """Store a dataset of ``n`` pairs in ``d`` dimensions (two offset shells,
    clipgeom.synthetic.two_shells; the default n < d: fewer items than
    features), like the demo world in miniature. Text row k is paired with
    image row k.

    - caption 0 is MARKUP and rows 1, 2, 4, 5 carry MARKUP_CAPTIONS; image
      row 3's id is MARKUP_ID; every image source starts with "**src**"
      (all of them must show literally);
    - the last 8 captions are one text, SHARED_CAPTION, with one embedding
      (the same caption embeds the same) of the largest norm;
    - thumbnails (written under ``tmp_path``) for the even image rows
      (``thumbs="even"``), for all (``"all"``) or none (``None``, or no tmp_path);
    - a concept frequency per image;
    - with ``snapshots``, training snapshots at steps 0 (the modalities
      overlap) and 10 (the final gap), with their captions.

    Returns (image, text, captions).
    """
    from PIL import Image

    from clipgeom import store, synthetic

    assert n >= 14, "rows 0-5 and the 8 shared captions"
    syn = synthetic.two_shells(n, d, seed=seed)
    image = np.asarray(syn.image, np.float32).copy()
    text = np.asarray(syn.text, np.float32).copy()
    caps = [f"caption {k}" for k in range(n)]
    caps[0] = MARKUP
    for k, c in zip(MARKUP_ROWS, MARKUP_CAPTIONS):
        caps[k] = c
    caps[n - 8:] = [SHARED_CAPTION] * 8
    text[n - 8:] = 2.5 * text[n - 8]
    ids = [f"im{k}" for k in range(n)]
    ids[3] = MARKUP_ID
    images = pd.DataFrame({"image_id": ids,
                           "source": [f"{SOURCE_MARKUP}_{k}.jpg" for k in range(n)],
                           "concept_frequency": np.linspace(0.1, 1.0, n)})
    thumbs_dir = None
    if tmp_path is not None and thumbs:
        rows = range(0, n, 2) if thumbs == "even" else range(n)
        thumbs_dir = tmp_path / f"{name}-thumbs"
        thumbs_dir.mkdir()
        for k in rows:
            Image.new("RGB", (16, 16), (10 * k, 90, 160)).save(thumbs_dir / f"t{k}.jpg")
        images["thumbnail"] = [f"t{k}.jpg" if k in rows else None for k in range(n)]
    texts = pd.DataFrame({"text_id": [f"t{k}" for k in range(n)], "caption": caps,
                          "image_id": ids})
    extras = manifest = None
    if snapshots:
        rng = np.random.default_rng(seed)
        mid, half = (image + text) / 2, (image - text) / 2
        extras = {"snapshot_steps": np.array(SNAPSHOT_STEPS)}
        for s in SNAPSHOT_STEPS:
            scale = s / SNAPSHOT_STEPS[-1]
            extras[f"snapshot_image_{s}"] = (mid + scale * half + 0.1).astype(np.float32)
            extras[f"snapshot_text_{s}"] = (mid - scale * half + 0.1
                                            + 0.2 * rng.standard_normal((n, d))
                                            ).astype(np.float32)
        manifest = {"demo": {"snapshot_captions": caps}}
    store.create_dataset(name, image, text, images, texts, thumbs_dir=thumbs_dir,
                         extra_arrays=extras, extra_manifest=manifest)
    return image, text, caps


def world_zip(n: int, seed: int, folder: str = "set") -> bytes:
    """``n`` scenes of the demo's generated world and their captions, zipped
    the way a user uploads them (``folder/sceneK.png`` + ``folder/captions.csv``)."""
    import io
    import zipfile

    from clipgeom.demo import world as W

    w = W.generate(n, seed=seed)
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        rows = ["image,caption"]
        for i in range(len(w)):
            im = io.BytesIO()
            w.image(i).save(im, format="PNG")
            zf.writestr(f"{folder}/scene{i}.png", im.getvalue())
            rows.append(f"scene{i}.png,{w.captions[i]}")
        zf.writestr(f"{folder}/captions.csv", "\n".join(rows) + "\n")
    return buf.getvalue()
