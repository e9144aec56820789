"""Compute the bundled demo's joint UMAP once and ship it in ``assets/demo/cache/``.

The "Projections & isotropy" page shows the joint UMAP (isotropy paper
Figs. 14-15) of seeded samples of ``per_modality`` rows per modality. For the
bundled demo and the page's default (2,000 rows per modality, the
``projection.UMAP_DEFAULTS`` parameters) the coordinates are precomputed here
and stored as float32 ``.npy`` (~32 KB) under the unversioned name that
``projection.read_shipped_umap`` / ``stored_umap`` look for, so a fresh
install shows the figure at once without importing umap-learn.

    python -m clipgeom.demo.ship_umap                 # assets/demo, 2,000 rows
    python -m clipgeom.demo.ship_umap --name demo --rows 2000

Run it again after rebuilding the demo (``python -m clipgeom demo build``
empties ``assets/demo/cache``): the file name hashes the sampled rows, so a
stale file is simply never read.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from .. import projection, store
from ..errors import InputError

DEFAULT_ROWS = 2000          # the page's default "Rows per modality for UMAP"


def ship_umap(name: str = "demo", per_modality: int = DEFAULT_ROWS, progress=None) -> Path:
    """Compute the joint UMAP of the bundled dataset ``name`` for ``per_modality``
    rows per modality and write it to its own ``cache/`` folder (what
    ``Dataset.shipped_dir("cache")`` returns). Returns the written file."""
    ds = store.open_dataset(name)
    if not ds.read_only:
        raise InputError(f"{name!r} is a user dataset ({ds.path}); only bundled datasets "
                         "under assets/ ship derived results. Its UMAP is cached on first use.")
    x, _ = projection.umap_sample(ds.image_emb, ds.text_emb, per_modality)
    params = projection.umap_params_for(x.shape[0])
    coords = projection.umap_coords(x, progress=progress, **params)
    return projection.write_shipped_umap(ds.path / "cache", x, coords, **params)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--name", default="demo", help="a bundled dataset (default: demo)")
    ap.add_argument("--rows", type=int, default=DEFAULT_ROWS,
                    help="rows per modality (the page's default: 2000)")
    args = ap.parse_args(argv)
    t0 = time.perf_counter()
    path = ship_umap(args.name, args.rows,
                     progress=lambda f, t: print(f"  {f:4.0%} {t}", flush=True))
    print(f"wrote {path} ({path.stat().st_size / 1024:.0f} KB) in "
          f"{time.perf_counter() - t0:.1f} s")


if __name__ == "__main__":
    main()
