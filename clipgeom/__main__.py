"""The clipgeom command line: ``python -m clipgeom <command> ...`` or ``clipgeom``.

Every command prints what a user needs and exits non-zero with a one-line
message (no traceback) when the input is wrong.
"""

from __future__ import annotations

import argparse
import csv
import json
import sys

from .errors import ClipgeomError


def _cmd_list(args) -> int:
    from . import store

    rows = store.list_datasets()
    if args.json:
        print(json.dumps(rows, indent=2, default=str))
        return 0
    if not rows:
        print(f"no datasets under {store.home()}; create one with "
              "'python -m clipgeom import' or 'python -m clipgeom synthetic'")
        return 0
    for r in rows:
        if r.get("error"):
            print(f"{r['name']:24s} CORRUPT: {r['error']}")
            continue
        ro = " (read-only)" if r.get("read_only") else ""
        print(f"{r['name']:24s} {r['n_images']:>8} images {r['n_texts']:>8} texts "
              f"dim {r['dim']}{ro}")
    return 0


def _cmd_import(args) -> int:
    from . import store

    ds = store.import_arrays(args.name, args.image_emb, args.text_emb,
                             captions=args.captions, image_list=args.image_list,
                             labels=args.labels, overwrite=args.overwrite)
    norm = ds.normalized_input
    print(f"imported {ds.name}: {ds.n_images} images, {ds.n_texts} texts, dim {ds.dim}, "
          f"{len(ds.pairs()[0])} pairs -> {ds.path}")
    for mod in ("image", "text"):
        if norm.get(mod):
            print(f"note: the {mod} embeddings are already L2-normalised; norm-based "
                  "statistics will describe the unit sphere, not the raw shell")
    return 0


def _cmd_synthetic(args) -> int:
    from . import store, synthetic

    data = synthetic.two_shells(args.n, args.dim, seed=args.seed)
    import pandas as pd

    texts = pd.DataFrame({"text_id": [f"txt{k:06d}" for k in range(args.n)],
                          "caption": data.captions,
                          "image_id": [f"img{k:06d}" for k in range(args.n)]})
    images = pd.DataFrame({"image_id": [f"img{k:06d}" for k in range(args.n)],
                           "source": [f"synthetic:{k}" for k in range(args.n)]})
    ds = store.create_dataset(args.name, data.image, data.text, images, texts,
                              model={"name": "synthetic two-shell generator"},
                              source={"kind": "synthetic", "generator": "two_shells",
                                      "n": args.n, "dim": args.dim, "seed": args.seed},
                              overwrite=args.overwrite)
    print(f"created SYNTHETIC dataset {ds.name}: {args.n} pairs, dim {args.dim} -> {ds.path}")
    return 0


def _cmd_report(args) -> int:
    from . import report, store

    ds = store.open_dataset(args.name)
    progress = None if args.quiet else (lambda m: print(f"... {m}", file=sys.stderr))
    rep = report.report_for_dataset(ds, temperature=args.temperature,
                                    max_pairs=args.max_pairs, seed=args.seed,
                                    progress=progress)
    if args.json:
        json.dump(rep, sys.stdout, allow_nan=False)
        sys.stdout.write("\n")
    else:
        print(report.summary_text(rep))
    return 0


def _cmd_conformity(args) -> int:
    from . import conformity, store

    ds = store.open_dataset(args.name)
    if args.modality == "image":
        emb, table, label_col = ds.image_emb, ds.images, "source"
        ids = table["image_id"]
    else:
        emb, table, label_col = ds.text_emb, ds.texts, "caption"
        ids = table["text_id"]
    fit = conformity.fit_conformity(emb)
    out = csv.writer(sys.stdout)
    out.writerow(["id", "exact", "estimated", "cos_to_mean", label_col])
    for i in range(len(fit.exact)):
        out.writerow([ids.iloc[i], f"{fit.exact[i]:.6f}", f"{fit.estimated[i]:.6f}",
                      f"{fit.cos_mean[i]:.6f}", table[label_col].iloc[i]])
    return 0


def _cmd_delete(args) -> int:
    from . import store

    store.delete_dataset(args.name)
    print(f"deleted {args.name}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="clipgeom", description=(
        "Geometry of CLIP embeddings before normalisation. Datasets live under "
        "$CLIPGEOM_HOME (default ./data)."))
    sub = p.add_subparsers(dest="command", required=True)

    s = sub.add_parser("list", help="list datasets")
    s.add_argument("--json", action="store_true")
    s.set_defaults(func=_cmd_list)

    s = sub.add_parser("import", help="import precomputed raw embeddings (.npy)")
    s.add_argument("name")
    s.add_argument("--image-emb", required=True, help="float array [n_images, d] (.npy)")
    s.add_argument("--text-emb", required=True, help="float array [n_texts, d] (.npy)")
    s.add_argument("--captions", help=".txt (one per line), .csv/.tsv or .jsonl with a "
                   "'caption' column and optional 'image' pairing column")
    s.add_argument("--image-list", help="one image path/source per line")
    s.add_argument("--labels", help="one label per image row")
    s.add_argument("--overwrite", action="store_true")
    s.set_defaults(func=_cmd_import)

    s = sub.add_parser("synthetic", help="create a SYNTHETIC two-shell dataset")
    s.add_argument("name")
    s.add_argument("--n", type=int, default=2000)
    s.add_argument("--dim", type=int, default=64)
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--overwrite", action="store_true")
    s.set_defaults(func=_cmd_synthetic)

    s = sub.add_parser("report", help="the geometry report of a dataset")
    s.add_argument("name")
    s.add_argument("--json", action="store_true", help="print one JSON object")
    s.add_argument("--temperature", type=float, default=0.01)
    s.add_argument("--max-pairs", type=int, default=5000,
                   help="pairs used as one batch for the loss (seeded sample above)")
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--quiet", action="store_true", help="no progress on stderr")
    s.set_defaults(func=_cmd_report)

    s = sub.add_parser("conformity", help="per-item conformity as CSV")
    s.add_argument("name")
    s.add_argument("--modality", choices=("image", "text"), default="image")
    s.add_argument("--csv", action="store_true", help="CSV output (the only format)")
    s.set_defaults(func=_cmd_conformity)

    s = sub.add_parser("delete", help="delete a user dataset")
    s.add_argument("name")
    s.set_defaults(func=_cmd_delete)
    return p


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except ClipgeomError as exc:
        print(f"clipgeom: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("clipgeom: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
