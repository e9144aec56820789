"""What the pages save by reading the stored report and the FAISS index.

On a generated stored dataset (``--n`` pairs x ``--dim``), after its report
is stored (as ``clipgeom report`` or Home leave it) and its indexes built (as
import does), times each page computation the old way and the new way:

* Projections' isotropy: ``projection.isotropy`` on both modalities vs
  ``dashboard.proj.isotropy`` (the report's numbers);
* Separability's first stage: ``geometry.summarize`` x 2, ``separability``,
  ``svm_top2``, ``linear_separability`` vs ``dashboard.shape.separability``;
* the Search page's interpolation (7 points, both paths): nearest image and
  caption by scanning every row (``interpolate.nearest_cosine``, 4 scans) vs
  the FAISS index (``interpolate.index_nearest``): the exact index the
  dataset gets up to 200,000 rows, then an approximate (IVF) one, what it
  gets above.

    .venv/bin/python bench/shared_results.py [--n 200000] [--dim 512]
"""

from __future__ import annotations

import os
import tempfile
import time
from pathlib import Path

from _common import emit, header, parser


def main() -> None:
    args = parser(__doc__.splitlines()[0], n=200_000, repeat=1).parse_args()
    header("pages: stored report and index vs recomputing", args)
    with tempfile.TemporaryDirectory(prefix="clipgeom-shared-") as home:
        os.environ["CLIPGEOM_HOME"] = home
        os.environ["CLIPGEOM_ASSETS"] = os.path.join(home, "no-assets")
        import numpy as np

        from clipgeom import geometry, index, interpolate, projection, report, store
        from dashboard import data, proj, shape
        from streamlit import logger as st_logger

        st_logger.set_log_level("error")        # "no runtime" warnings: not a page run

        store.ASSETS_DIR = Path(os.environ["CLIPGEOM_ASSETS"])
        rng = np.random.default_rng(args.seed)
        sigma = (np.arange(1, args.dim + 1) ** -0.5 * 3).astype(np.float32)
        img = rng.standard_normal((args.n, args.dim), dtype=np.float32) * sigma + 0.3
        txt = 0.5 * img + rng.standard_normal((args.n, args.dim), dtype=np.float32) * sigma - 0.3
        ds = store.create_dataset("bench", img, txt)
        del img, txt
        out = {}

        def t(label, fn):
            t0 = time.perf_counter()
            r = fn()
            out[label] = round(time.perf_counter() - t0, 3)
            print(f"{label:>34}: {out[label]:8.2f} s", flush=True)
            return r

        loaded = data.open_dataset("bench")
        t("report (once, stored)", lambda: report.stored_report(
            ds, temperature=loaded.default_temperature, max_pairs=report.DEFAULT_MAX_PAIRS))
        t("indexes (once, at import)", lambda: [index.build_index(ds, m)
                                                 for m in ("image", "text")])
        x, y = ds.image_emb, ds.text_emb
        data._report_memo().clear()
        t("isotropy: recomputed", lambda: (projection.isotropy(x), projection.isotropy(y)))
        t("isotropy: from the report", lambda: proj.isotropy(loaded))

        def old_sep():
            si, st_ = geometry.summarize(x), geometry.summarize(y)
            sep = geometry.separability(si, st_)
            order = np.argsort(-sep, kind="stable")
            geometry.svm_top2(x, y, [int(order[0]), int(order[1])])
            geometry.linear_separability(x, y)

        data._report_memo().clear()
        t("separability: recomputed", old_sep)
        t("separability: from the report", lambda: shape.separability(loaded))

        a, b = np.asarray(x[3], np.float64), np.asarray(x[41], np.float64)
        mean = np.asarray(x[:50000], np.float64).mean(0)
        thetas = np.linspace(0, 1, 7)
        t("interpolation: 4 scans", lambda: interpolate.compare_paths(
            a, b, mean, thetas, 1.0, {"image": x, "text": y}))
        targets = {m: interpolate.index_nearest(ds, m) for m in ("image", "text")}
        t("exact indexes: load (once a process)", lambda: [index.load_index(ds, m)
                                                          for m in ("image", "text")])
        t("interpolation: FAISS exact index", lambda: interpolate.compare_paths(
            a, b, mean, thetas, 1.0, targets))
        t("IVF indexes (once)", lambda: [index.build_index(ds, m, kind="ivf", force=True)
                                         for m in ("image", "text")])
        index.clear_cache()
        targets = {m: interpolate.index_nearest(ds, m) for m in ("image", "text")}
        t("IVF indexes: load (once a process)", lambda: [index.load_index(ds, m)
                                                        for m in ("image", "text")])
        t("interpolation: FAISS IVF index", lambda: interpolate.compare_paths(
            a, b, mean, thetas, 1.0, targets))
        ds.close()
    emit({"n": args.n, "dim": args.dim, "seconds": out})


if __name__ == "__main__":
    main()
