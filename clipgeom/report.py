"""The report: every headline measurement of a dataset as one JSON object.

``python -m clipgeom report NAME --json`` prints :func:`build_report`'s
result. Its key names are a public contract (schema ``clipgeom.report/1``):
later tools read them, so keep them and only add. Values are plain floats,
ints, lists and dicts; NaN becomes null.

Paired measurements (loss, alpha sweeps) use one caption per image (the
first), like the paper's 5k MS-COCO pairs, and run on a seeded sample of at
most ``max_pairs`` pairs: the contrastive loss of a batch depends on its size
(the uniformity term grows like log N), so a fixed batch keeps numbers
comparable across datasets, and it keeps the report fast on 100k+ pairs.

Every statistic over all rows (moments, norms, conformity and its fit,
isotropy, the whitened likelihood, per-feature and conformity histograms, the
gap measures) comes from mergeable passes over row blocks
(:mod:`clipgeom.moments`), run on this machine's cores (``engine="local"``,
:mod:`clipgeom.parallel`) or as Ray tasks (``engine="ray"``) with the same
numbers. What is not one-pass (SVM and logistic regression, hubness, the
loss, alpha sweeps and cross-modal measures) runs on seeded samples, as
``computation`` in the report says; hubness and the pair-sample measures run
on a side thread while the passes run.
"""

from __future__ import annotations

import hashlib
import json
import math
from concurrent.futures import ThreadPoolExecutor
from typing import Callable, Optional

import numpy as np

from . import conformity, geometry, loss, measures, moments, stored_summaries, threads, validate
from ._atomic import replacing
from .errors import DatasetError

SCHEMA = "clipgeom.report/1"
DEFAULT_MAX_PAIRS = 5000
Progress = Optional[Callable[[str], None]]


def _clean(obj):
    """JSON-safe copy: numpy scalars/arrays to Python, NaN/Inf to None."""
    if isinstance(obj, dict):
        return {str(k): _clean(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_clean(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return _clean(obj.tolist())
    if isinstance(obj, (np.bool_, bool)):
        return bool(obj)
    if isinstance(obj, (np.integer,)):
        return int(obj)
    if isinstance(obj, (float, np.floating)):
        f = float(obj)
        return f if math.isfinite(f) else None
    return obj


def _modality_section(first: moments.FirstMoments, sec: moments.SecondMoments,
                      dim: int) -> dict:
    """One modality's block from its pass-1 and pass-2 statistics (all rows)."""
    shell = geometry.thin_shell_from_moments(first, sec)
    var = first.variance
    odd = geometry.off_diagonal_dominance(first.cov)
    fit = conformity.fit_from_moments(first, sec)
    lam = measures.covariance_eigenvalues(first.cov)
    return {
        "n": first.n,
        "mean_norm": shell.mean_norm,
        "norm_var": shell.norm_var,
        "rms_norm": shell.rms_norm,
        "rms_rel_error": shell.rms_rel_error,
        "shell_radius": shell.mean_norm,
        "shell_std": shell.shell_std,
        "raw_norm": {"mean": shell.raw_mean_norm, "std": shell.raw_norm_std},
        "mean_vector_norm": float(np.linalg.norm(first.mean)),
        "mean_over_sigma": geometry.mean_over_sigma(first),
        "variance": {"max": float(var.max()), "median": float(np.median(var)),
                     "max_over_median": float(var.max() / np.median(var))
                     if np.median(var) > 0 else None},
        "odd": {"median": float(np.median(odd)), "frac_above_1": float(np.mean(odd > 1))},
        "top_offset_features": [{"feature": f["feature"], "mean_over_std": f["mean_over_std"]}
                                for f in geometry.offset_features(first, 10)],
        "conformity": {"mean": fit.mean, "a": fit.a, "b": fit.b, "pearson": fit.pearson,
                       "theory_a": fit.theory_a, "a_paper": fit.a_paper,
                       "b_paper": fit.b_paper, "theory_a_paper": fit.theory_a_paper},
        "isotropy": moments.isotropy_from_log_z(sec.log_z),
        # RankMe (Garrido et al. 2023) and the participation ratio, centred rows
        "effective_rank": measures.effective_rank_from_eigenvalues(lam),
        "participation_ratio": measures.participation_ratio_from_eigenvalues(lam),
        "effective_rank_note": (f"{first.n} rows in {dim} dimensions: the rank is "
                                f"at most {first.n - 1}" if first.n <= dim else ""),
        # whitened likelihood (Betser, Levi & Gilboa 2025) vs exact conformity
        "likelihood": _likelihood_section(first, sec, dim),
    }


def _whitening(first: moments.FirstMoments):
    """measures.whitened_log_likelihood's W = (C [+ ridge])^{-1/2}, as columns."""
    lam, vec, rank, ridge = measures.whitening_eigh(first.cov)
    return vec / np.sqrt(lam), rank, ridge


def _likelihood_section(first, sec, dim: int) -> dict:
    """measures.likelihood_section's block from the streamed log-likelihoods."""
    _, rank, ridge = _whitening(first)
    ll = sec.kept["log_likelihood"]
    note = "" if ridge == 0 else (f"covariance rank {rank} < {dim} (n = {first.n}): "
                                  f"whitened with a ridge of {ridge:.3g}")
    return {"conformity_spearman": measures.spearman(ll, sec.kept["conformity"]),
            "mean": sec.mean("log_likelihood"),
            "std": float(np.sqrt(max(sec.var("log_likelihood"), 0.0))),
            "rank": rank, "ridge": ridge, "note": note}


def _sweep_dict(sw: loss.AlphaSweep) -> dict:
    return {"alpha": sw.alpha, "total": sw.total, "alignment": sw.alignment,
            "uniformity": sw.uniformity, "loss_correct": sw.loss_correct,
            "loss_misclassified": sw.loss_misclassified,
            "accuracy_i2t": sw.accuracy_i2t, "argmin": sw.argmin}


def build_report(image: np.ndarray, text: np.ndarray, pair_image_rows: np.ndarray,
                 pair_text_rows: np.ndarray, *, dataset: str = "", temperature: float =
                 loss.CLIP_TEMPERATURE, alphas=None, max_pairs: int = DEFAULT_MAX_PAIRS,
                 seed: int = 0, normalized_input: Optional[dict] = None,
                 progress: Progress = None, reuse: Optional[dict] = None,
                 engine=None, summaries_out: Optional[dict] = None) -> dict:
    """Compute the report for raw image/text embeddings and their pairing.

    ``pair_image_rows[k]``, ``pair_text_rows[k]`` index pair k (one caption
    per image). ``progress(message)`` is called before each stage.

    ``reuse``: a report of the same arrays and seed (any temperature or pair
    count): its sections that depend on neither are taken as they are and
    only the paired measures are computed (what a temperature change needs).

    ``engine``: where the passes over all rows run: "local" (default: row
    blocks in this process), "ray" (a local Ray) or a
    :class:`clipgeom.moments.RayEngine` (e.g. connected to a cluster).

    ``summaries_out``: a dict that receives each modality's
    :class:`clipgeom.geometry.ModalitySummary` ("image", "text") from the
    passes (what ``geometry.summarize`` would compute again) and, under
    "rows", each modality's per-row exact conformity and cos(m, v); left
    empty when ``reuse`` spares the passes.
    """
    say = progress or (lambda msg: None)
    alphas = loss.default_alphas() if alphas is None else np.asarray(alphas, float)
    if _reusable(reuse, image, text, seed, alphas):
        say("modality statistics (reused)")
        rep = {k: v for k, v in reuse.items() if k in _UNPAIRED_KEYS}
        rep.update(dataset=dataset, temperature=float(temperature))
        paired = _paired_measures(image, text, pair_image_rows, pair_text_rows, temperature,
                                  alphas, max_pairs, seed, say)
        return _clean(_paired_sections(rep, paired, seed))
    say("modality statistics")
    # checked once here; the functions below get read-only views and do not rescan
    image = validate.checked(image, "image embeddings", min_rows=3)
    text = validate.checked(text, "text embeddings", min_rows=3)
    validate.same_width(image, text, "image embeddings", "text embeddings")
    eng = moments.engine_for(engine)
    # The measures on seeded samples (hubness; loss, logits, alpha sweeps and
    # cross-modal measures on the pair sample) need nothing from the passes
    # over all rows: they run on a side thread while the passes run (on the
    # engine's worker processes), so both use the cores at once. The side
    # thread reports no stages of its own (a caller's progress callback may
    # only work from this thread).
    side = ThreadPoolExecutor(1, thread_name_prefix="clipgeom-report-samples")
    sampled = side.submit(_sampled_measures, image, text, pair_image_rows, pair_text_rows,
                          temperature, alphas, max_pairs, seed)
    try:
        # float64 GEMM passes: one BLAS thread (clipgeom.threads: on a shared
        # machine two threads spin at every barrier; 3x the CPU for the same work)
        with threads.policy("summary"):
            rep = _all_rows_sections(image, text, pair_image_rows, pair_text_rows,
                                     dataset=dataset, temperature=temperature, alphas=alphas,
                                     seed=seed, normalized_input=normalized_input, eng=eng,
                                     say=say, summaries_out=summaries_out)
        say("hubness, loss, alpha sweeps and cross-modal measures on samples")
        hub, paired = sampled.result()
    finally:
        side.shutdown(wait=False, cancel_futures=True)
        if eng is not engine:            # made here from a name: stop what it started
            eng.close()
    rep["image"]["hubness"] = hub["image"]
    rep["text"]["hubness"] = hub["text"]
    return _clean(_paired_sections(rep, paired, seed))


def _sampled_measures(image, text, pair_image_rows, pair_text_rows, temperature, alphas,
                      max_pairs, seed) -> tuple[dict, dict]:
    """Hubness (exact kNN on a seeded sample of each modality) and
    :func:`_paired_measures`: the report's side thread."""
    quiet = (lambda msg: None)
    with threads.policy("summary"):
        hub = measures.modality_hubness(image, text, seed=seed)
    return hub, _paired_measures(image, text, pair_image_rows, pair_text_rows, temperature,
                                 alphas, max_pairs, seed, quiet)


def _all_rows_sections(image, text, pair_image_rows, pair_text_rows, *, dataset, temperature,
                       alphas, seed, normalized_input, eng, say, summaries_out=None) -> dict:
    """Every section over all rows (mergeable passes on ``eng``), plus the
    supervised fits on their seeded samples: the report without hubness and
    its paired sections."""
    f_img = moments.first_moments(image, engine=eng, gram=True)
    f_txt = moments.first_moments(text, engine=eng, gram=True)
    sep = geometry.separability(f_img, f_txt)
    order = np.argsort(-sep, kind="stable")
    top2 = [int(order[0]), int(order[1])] if len(order) > 1 else [int(order[0])] * 2
    kl_features = [int(f) for f in order[:3]]
    say("linear separability")
    svm = geometry.svm_top2(image, text, top2, seed=seed)
    lin = geometry.linear_separability(image, text, seed=seed)
    norm = normalized_input or {"image": False, "text": False}
    rep: dict = {
        "schema": SCHEMA, "dataset": dataset,
        "n_images": int(image.shape[0]), "n_texts": int(text.shape[0]),
        "n_pairs": int(len(pair_image_rows)), "dim": int(image.shape[1]),
        "normalized_input": bool(norm.get("image") or norm.get("text")),
        "normalized_input_by_modality": {"image": bool(norm.get("image")),
                                         "text": bool(norm.get("text"))},
        "temperature": float(temperature),
        "separability": {
            "per_feature": sep,
            "top": [{"feature": int(f), "sep": float(sep[f])} for f in order[:10]],
            "n_above_1": int(np.sum(sep > 1)),
            "svm_top2": {"features": svm.features, "accuracy": svm.accuracy,
                         "weights": svm.weights, "bias": svm.bias, "n_used": svm.n_used},
            "linear_accuracy": lin,
            "kl_top": None,
        },
    }
    # Feature histograms on the pooled range of both modalities (Fig. 2's KL).
    edges = {f: moments.pooled_edges(min(f_img.col_min[f], f_txt.col_min[f]),
                                     max(f_img.col_max[f], f_txt.col_max[f]), KL_BINS)
             for f in kl_features}
    ai, at = conformity.sweep_alphas(alphas, "both")
    second = {}
    for mod, x, first, shifts in (("image", image, f_img, ai), ("text", text, f_txt, at)):
        say(f"{mod} shell, ellipsoid, conformity, isotropy")
        consts = conformity.conformity_constants(
            first, whitening=_whitening(first)[0], iso_vecs=moments.isotropy_vectors(first),
            alphas=shifts, feature_edges=edges,
            keep=("conformity", "log_likelihood")
            + (("norm", "centred_norm", "cos_mean") if summaries_out is not None else ()))
        second[mod] = moments.second_moments(x, consts, engine=eng)
        rep[mod] = _modality_section(first, second[mod], int(x.shape[1]))
        if summaries_out is not None:
            summaries_out[mod] = geometry.ModalitySummary(
                mean=first.mean, std=first.std, cov=first.cov,
                norms=second[mod].kept["norm"], centered_norms=second[mod].kept["centred_norm"])
            summaries_out.setdefault("rows", {})[mod] = {
                k: second[mod].kept[k] for k in stored_summaries.ROW_VALUES}
    rep["separability"]["kl_top"] = [
        {"feature": f, "kl": geometry.histogram_pair(
            edges[f], second["image"].features[f].counts,
            second["text"].features[f].counts).kl} for f in kl_features]
    say("modality gap, RMG, Fréchet terms")
    rep["modality_gap"] = _gap_section(image, text, f_img, f_txt, pair_image_rows,
                                       pair_text_rows, eng)
    say("conformity KL over alpha")
    kl = moments.shifted_conformity_kl(image, text, f_img, f_txt, second["image"],
                                       second["text"], ai, at, len(alphas), KL_BINS, engine=eng)
    kls = conformity.ConformityKLSweep(alpha=alphas, kl=kl, modality="both", bins=KL_BINS)
    rep["conformity_kl"] = {"alpha": kls.alpha, "kl": kls.kl, "at_zero": kls.at_zero,
                            "argmin": kls.argmin, "modality": kls.modality, "bins": kls.bins}
    rep["computation"] = {"engine": eng.name, "all_rows": list(ALL_ROWS),
                          "sampled": _sampled_notes(image, text, seed)}
    return rep


KL_BINS = 50
ALL_ROWS = ("moments and separability", "thin shell and norms", "variance, ODD, offsets",
            "conformity and its fit", "isotropy", "effective rank", "whitened likelihood",
            "per-feature KL", "modality gap, instance gap, RMG, Fréchet terms",
            "conformity KL over alpha")


def _sampled_notes(image, text, seed: int) -> dict:
    """What runs on a seeded sample instead of all rows (not one-pass)."""
    fit = (f"seeded sample (seed {seed}) of at most {geometry.FIT_SAMPLE:,} rows per "
           "modality" if max(image.shape[0], text.shape[0]) > geometry.FIT_SAMPLE
           else "all rows")
    hub = (f"seeded sample (seed {seed}) of at most {measures.HUBNESS_SAMPLE:,} rows per "
           "modality" if max(image.shape[0], text.shape[0]) > measures.HUBNESS_SAMPLE
           else "all rows")
    return {"svm_top2": fit, "linear_accuracy": fit, "hubness": hub}


def _gap_section(image, text, f_img, f_txt, pair_image_rows, pair_text_rows, eng) -> dict:
    """Gap measures on all rows and all pairs (Liang et al. 2022; Schrodi et al.
    2025; the Fréchet distance of the raw embeddings' Gaussians), from the
    pass-1 moments and one pass over the pairs."""
    fr = measures.frechet_from_summaries(f_img, f_txt)
    out = {"centroid_distance": geometry.centroid_distance(f_img, f_txt),
           "mean_cosine": geometry.mean_cosine(f_img, f_txt),
           "normalized_centroid_distance": float(np.linalg.norm(f_img.unit_mean
                                                                - f_txt.unit_mean)),
           "instance_gap": None, "rmg": None, "rmg_convention": measures.RMG_CONVENTION,
           "rmg_parts": None,
           "frechet": {"total": fr.total, "mean_term": fr.mean_term, "cov_term": fr.cov_term,
                       "space": "raw embeddings, population covariances"}}
    ii, tt = measures.checked_pairs(image, text, pair_image_rows, pair_text_rows)
    if ii.size:
        gaps = moments.pair_gaps(image, text, ii, tt, engine=eng)
        # RelativeModalityGap of measures.relative_modality_gap, from the moments
        matching = float(gaps.mean[1])
        intra_i = (1.0 - f_img.mean_offdiag_cos) / 2.0
        intra_t = (1.0 - f_txt.mean_offdiag_cos) / 2.0
        den = matching + (intra_i + intra_t) / 2.0
        out["instance_gap"] = float(gaps.mean[0])
        out["rmg"] = matching / den if den > 0 else float("nan")
        out["rmg_parts"] = {"matching": matching, "intra_image": float(intra_i),
                            "intra_text": float(intra_t), "n_pairs": int(ii.size)}
    return out


# Sections that depend on neither the temperature nor the pair sample size.
_UNPAIRED_KEYS = ("schema", "n_images", "n_texts", "n_pairs", "dim", "normalized_input",
                  "normalized_input_by_modality", "separability", "image", "text",
                  "modality_gap", "conformity_kl", "seed_unpaired", "computation")


def _reusable(reuse, image, text, seed, alphas) -> bool:
    if not isinstance(reuse, dict) or reuse.get("schema") != SCHEMA:
        return False
    try:
        ck = reuse["conformity_kl"]["alpha"]
        return (reuse["n_images"] == image.shape[0] and reuse["n_texts"] == text.shape[0]
                and reuse["dim"] == image.shape[1] and _looks_like_report(reuse)
                and reuse.get("seed_unpaired", 0) == int(seed)
                and len(ck) == len(alphas) and np.allclose(ck, alphas))
    except (KeyError, TypeError, ValueError):
        return False


def _paired_measures(image, text, pair_image_rows, pair_text_rows, temperature, alphas,
                     max_pairs, seed, say) -> dict:
    """Loss, EuCLIP logits, cross-modal measures and alpha sweeps on the seeded
    pair sample (Eq. 7-9, 14-15): the report's sections by key, with
    ``"sampled"`` (how each was sampled) and ``"unavailable"`` (why one is not)."""
    n_pairs = len(pair_image_rows)
    out: dict = {"n_pairs": n_pairs, "sampled": {}, "unavailable": {}}
    if n_pairs < 2:
        reason = (f"the dataset has {n_pairs} image-caption pair(s); the loss needs "
                  "at least 2 (give captions an image, or import paired arrays)")
        out.update(loss=None, alpha_sweep=None, logits=None, cross_modal=None)
        out["unavailable"] = {"loss": reason, "alpha_sweep": reason, "logits": reason,
                              "cross_modal": (f"the dataset has {n_pairs} image-caption "
                                              "pair(s); CKA and mutual-kNN need at least 3")}
        return out
    pick = np.arange(n_pairs)
    if n_pairs > max_pairs:
        pick = np.sort(np.random.default_rng(seed).choice(n_pairs, max_pairs, replace=False))
    vi = np.asarray(image[np.asarray(pair_image_rows)[pick]], dtype=np.float32)
    vt = np.asarray(text[np.asarray(pair_text_rows)[pick]], dtype=np.float32)
    say(f"loss on {len(pick)} pairs under four logits")
    with threads.policy("loss"):
        geo = loss.logit_comparison(vi, vt, temperature)
    cos = geo["cosine"]
    out["loss"] = {"total": cos.total, "alignment": cos.alignment,
                   "uniformity": cos.uniformity, "accuracy_i2t": cos.accuracy_i2t,
                   "accuracy_t2i": cos.accuracy_t2i, "loss_correct": cos.loss_correct,
                   "loss_misclassified": cos.loss_misclassified,
                   "n_pairs_used": int(len(pick)), "sampled": bool(len(pick) < n_pairs),
                   "seed": int(seed)}
    out["logits"] = {k: {"total": r.total, "alignment": r.alignment,
                         "uniformity": r.uniformity, "accuracy_i2t": r.accuracy_i2t,
                         "accuracy_t2i": r.accuracy_t2i} for k, r in geo.items()}
    out["cross_modal"] = _cross_modal(vi, vt, seed, n_pairs, say)
    if out["cross_modal"] is None:
        out["unavailable"]["cross_modal"] = (f"the dataset has {n_pairs} pairs; CKA and "
                                             "mutual-kNN need at least 3")
    batch = (f"seeded sample (seed {seed}) of {len(pick):,} of {n_pairs:,} pairs"
             if len(pick) < n_pairs else f"all {n_pairs:,} pairs as one batch")
    for key in ("loss", "logits", "alpha_sweep", "cross_modal"):
        out["sampled"][key] = batch
    out["alpha_sweep"] = {}
    for mod in ("image", "text", "both"):
        say(f"alpha sweep ({mod})")
        with threads.policy("alpha_sweep"):
            out["alpha_sweep"][mod] = _sweep_dict(
                loss.alpha_sweep(vi, vt, alphas, mod, temperature))
    return out


def _paired_sections(rep, paired: dict, seed) -> dict:
    """``rep`` with :func:`_paired_measures`' sections and notes added."""
    norm = rep["normalized_input_by_modality"]
    rep["seed_unpaired"] = int(seed)
    comp = dict(rep.get("computation") or {})     # a copy: ``reuse`` stays as it was
    comp["sampled"] = {**(comp.get("sampled") or {}), **paired["sampled"]}
    rep["computation"] = comp
    for key in ("loss", "logits", "cross_modal", "alpha_sweep"):
        rep[key] = paired[key]
    unavailable = dict(paired["unavailable"])
    if paired["n_pairs"] == 0:
        unavailable["instance_gap"] = unavailable["rmg"] = (
            "the dataset has no image-caption pairs; the instance gap and RMG compare pairs")
    if norm.get("image") or norm.get("text"):
        unavailable["thin_shell"] = ("input arrived L2-normalised: norm statistics describe "
                                     "the unit sphere, not the raw shell")
    rep["unavailable"] = unavailable
    return rep


def _cross_modal(vi, vt, seed, n_pairs, say) -> Optional[dict]:
    """Paired image rows vs their caption rows on the seeded pair sample:
    linear CKA (Kornblith et al. 2019), mutual-kNN@k (Huh et al. 2024; it falls
    with the sample size, so compare at equal n_used) and the Spearman
    correlation of conformity within each modality's sample."""
    if len(vi) < 3:
        return None
    n_used = min(len(vi), measures.CROSS_SAMPLE)
    say(f"cross-modal CKA and mutual-kNN on {n_used} pairs")
    cs = measures.cross_space_similarity(vi, vt, max_rows=measures.CROSS_SAMPLE, seed=seed)
    notes = []
    if cs.n_used < n_pairs:
        notes.append(f"seeded sample (seed {seed}) of {cs.n_used} of {n_pairs} pairs")
    if cs.k < measures.DEFAULT_K:
        notes.append(f"k lowered to {cs.k} ({cs.n_used} pairs)")
    notes.append(measures.MUTUAL_KNN_NOTE)
    note = "; ".join(notes)
    return {"cka": cs.cka, "mutual_knn": {"k": cs.k, "value": cs.mutual_knn},
            "conformity_spearman": cs.conformity_spearman, "n_used": cs.n_used,
            "sampled": bool(cs.n_used < n_pairs), "note": note}


def default_temperature(ds) -> float:
    """The dataset's model's own learned τ where the manifest records it
    (``model.temperature``), else CLIP's 0.01: what the dashboard and CLI use
    unless told otherwise.

    Rounded to 4 decimals and kept within [0.001, 1], as the dashboard's τ
    control shows it, so ``clipgeom report`` stores the very report the
    dashboard's Home page reads (:func:`stored_report` keys on τ)."""
    t = (ds.manifest.get("model") or {}).get("temperature")
    if not (isinstance(t, (int, float)) and not isinstance(t, bool) and t > 0):
        return loss.CLIP_TEMPERATURE
    return min(max(round(float(t), 4), 0.001), 1.0)


def report_for_dataset(ds, **kwargs) -> dict:
    """:func:`build_report` on a :class:`clipgeom.store.Dataset`."""
    ii, tt = ds.pairs()
    return build_report(ds.image_emb, ds.text_emb, ii, tt, dataset=ds.name,
                        normalized_input=ds.normalized_input, **kwargs)


def _cache_name(ds, params: dict) -> str:
    from . import __version__        # a new release recomputes: its maths may differ

    key = json.dumps({"schema": SCHEMA, "version": __version__,
                      "fingerprint": ds.fingerprint, **params}, sort_keys=True)
    return f"report-{hashlib.sha256(key.encode()).hexdigest()[:20]}.json"


def stored_report(ds, *, temperature: float = loss.CLIP_TEMPERATURE,
                  max_pairs: int = DEFAULT_MAX_PAIRS, seed: int = 0,
                  progress: Progress = None, reuse: Optional[dict] = None,
                  engine=None, recompute: bool = False) -> dict:
    """:func:`report_for_dataset`, computed once per dataset fingerprint and
    parameters and kept as JSON in the dataset's cache folder (a bundled
    dataset may ship its reports in ``<dataset>/cache``). A report takes
    seconds to minutes; reading it back takes milliseconds. The CLI's
    ``report`` and the dashboard both go through here, so whichever computes
    a report first computes it for both. ``engine`` is not part of the key
    (both engines give the same numbers); ``recompute`` ignores a stored one
    and replaces it. A computed report also keeps each modality's summary
    (:mod:`clipgeom.stored_summaries`)."""
    params = {"temperature": float(temperature), "max_pairs": int(max_pairs),
              "seed": int(seed)}
    name = _cache_name(ds, params)
    for where in (() if recompute else
                  (lambda d: d.shipped_dir("cache"), lambda d: d.cache_dir)):
        folder = where(ds)
        if folder is not None and (folder / name).is_file():
            try:
                rep = json.loads((folder / name).read_text(encoding="utf-8"))
            except (OSError, ValueError):
                continue                  # damaged: recompute and replace below
            if not _looks_like_report(rep):
                continue                  # valid JSON but not a report: recompute
            rep["dataset"] = ds.name      # equal arrays under another name share it
            return rep
    summaries: dict = {}
    rep = report_for_dataset(ds, progress=progress, reuse=reuse, engine=engine,
                             summaries_out=summaries, **params)
    try:
        with replacing(ds.cache_dir / name) as tmp:
            tmp.write_text(json.dumps(rep), encoding="utf-8")
    except (OSError, DatasetError):
        pass        # a read-only or full home: the report is still shown, just not kept
    if summaries:
        stored_summaries.save(ds, summaries["image"], summaries["text"], summaries.get("rows"))
    return rep


def _looks_like_report(rep) -> bool:
    """A current report: an older one (a cached or shipped file written before
    the issue-11 measures) lacks their keys and is recomputed."""
    return (isinstance(rep, dict) and rep.get("schema") == SCHEMA
            and all(isinstance(rep.get(k), dict) for k in ("separability", "image", "text",
                                                           "modality_gap"))
            and "rmg" in rep["modality_gap"] and "frechet" in rep["modality_gap"]
            and all(isinstance(rep[m], dict) and "hubness" in rep[m] and "likelihood" in rep[m]
                    for m in ("image", "text")))


def summary_text(rep: dict) -> str:
    """A short human-readable summary of a report (the CLI's default output)."""
    def f(x, fmt=".4g"):
        return "n/a" if x is None else format(x, fmt)

    sep = rep["separability"]
    lines = [
        f"dataset {rep['dataset']}: {rep['n_images']} images, {rep['n_texts']} texts, "
        f"{rep['n_pairs']} pairs, dim {rep['dim']}"
        + ("  [input was L2-normalised]" if rep["normalized_input"] else ""),
        f"separability: {sep['n_above_1']} features with Sep > 1; top {sep['top'][0]['feature']}"
        f" (Sep {f(sep['top'][0]['sep'])}); SVM on top two {f(sep['svm_top2']['accuracy'], '.1%')},"
        f" logistic on all {f(sep['linear_accuracy'], '.1%')}",
    ]
    for mod in ("image", "text"):
        m = rep[mod]
        lines.append(
            f"{mod}: shell mu_norm {f(m['mean_norm'])}, var(y) {f(m['norm_var'])}, "
            f"sqrt(E||x||^2) {f(m['rms_norm'])} (rel. err {f(m['rms_rel_error'], '.2%')}); "
            f"||m||/||sigma|| {f(m['mean_over_sigma'], '.3f')}; conformity a {f(m['conformity']['a'])}"
            f" b {f(m['conformity']['b'])} pearson {f(m['conformity']['pearson'], '.5f')}; "
            f"I1 {f(m['isotropy']['I1'], '.3f')} I2 {f(m['isotropy']['I2'], '.3f')}")
    if rep["loss"]:
        lo = rep["loss"]
        lines.append(f"loss (tau {rep['temperature']}, {lo['n_pairs_used']} pairs): total "
                     f"{f(lo['total'])} = alignment {f(lo['alignment'])} + uniformity "
                     f"{f(lo['uniformity'])}; top-1 i2t {f(lo['accuracy_i2t'], '.1%')} "
                     f"t2i {f(lo['accuracy_t2i'], '.1%')}")
        lines.append("alpha-shift argmin: " + ", ".join(
            f"{k} {f(v['argmin'], '.2f')}" for k, v in rep["alpha_sweep"].items()))
    else:
        lines.append(f"loss: unavailable ({rep['unavailable'].get('loss')})")
    lines.append(f"conformity KL(image||text) at alpha 0: {f(rep['conformity_kl']['at_zero'])}, "
                 f"argmin alpha {f(rep['conformity_kl']['argmin'], '.2f')}")
    return "\n".join(lines)
