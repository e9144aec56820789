"""Compare 2-6 embedding spaces side by side: models, training steps, datasets.

The property table and the cross-space measures come from clipgeom.compare
(the CLI's `python -m clipgeom compare`); the overlays draw one colour per
dataset. Captions are user strings: shown in tables and plain-text galleries."""

import numpy as np
import pandas as pd
import plotly.graph_objects as go
import streamlit as st
from plotly.subplots import make_subplots

from clipgeom import compare as core
from clipgeom import measures
from clipgeom.safety import csv_safe
from dashboard import comparison as C
from dashboard import figures, selection, ui

ui.page_header("compare", dataset=False)
st.title("Compare embedding spaces")
st.caption("Two to six datasets, models or training steps of one model, side by side: "
           "the double-ellipsoid properties (Levi & Gilboa 2025), the modality gap "
           "(Liang et al. 2022; Schrodi et al. 2025), effective rank, hubness, and, for "
           "the same items in two spaces, CKA, mutual-kNN (Huh et al. 2024) and how far "
           "the spaces agree on which items are typical.")

available = C.choices()
default = C.default_sides(available)
from_url = [s for s in str(ui.url_value("compare", ",".join(default))).split(",")
            if s in available]
with figures.controls(), ui.section("Controls"):
    picked = st.multiselect(
        "Datasets or training steps (2-6)", available, default=from_url or default,
        max_selections=C.MAX_SIDES, key="compare_sides",
        help="name@step is a training snapshot of that dataset (the demo records steps "
             "0 = random initialisation to 2000).")
    ui.url_keep("compare", ",".join(picked))
    own_tau = st.radio("Temperature", ["each model's own τ", "one τ for all"],
                       key="compare_tau_mode",
                       help="The loss, alpha-shift and retrieval rows use it. A model "
                            "without a cosine-logit temperature (Euclidean logits, "
                            "imported arrays) uses CLIP's 0.01.")
    tau = None
    if own_tau == "one τ for all":
        tau = float(st.number_input("τ for every side", 0.001, 1.0, 0.01, step=0.005,
                                    format="%.4f", key="compare_tau"))
    k = int(st.slider("k (mutual-kNN)", 1, 50, 10, key="compare_k",
                      help="Neighbours for mutual-kNN@k (Huh et al. 2024)."))
    scale = st.radio("Distributions", ["as measured", "each side standardised"],
                     key="compare_scale",
                     help="Models differ in scale (a random-initialised tower's norms can "
                          "be 1,000 times smaller). Standardised: norms divided by each "
                          "side's mean (relative shell thickness), conformity as z-scores "
                          "(the shape of each distribution).")
    alpha_mod = st.radio("Alpha shift applied to", ["both", "image", "text"],
                         horizontal=True, key="compare_alpha_mod")

if len(picked) < 2:
    st.info("Pick at least two datasets or training steps in the sidebar.")
    st.stop()

cmp = None
with ui.section("Comparison"), st.spinner("Measuring each space (reports are stored and "
                                          "shared with the other pages and the CLI)…"):
    cmp = C.comparison(picked, tau, k)
if cmp is None:
    st.stop()
labels = cmp.datasets
colours = {lab: C.dataset_colour(i) for i, lab in enumerate(labels)}

# ---------------------------------------------------------------- property table
with ui.section("Property table"):
    st.subheader("Properties side by side")
    rows = []
    for key, label in core.MEASURES:
        vals = cmp.table[key]
        if all(v is None for v in vals):
            continue
        rows.append((key, label, vals))
    df = pd.DataFrame([[lab] + list(v) for _, lab, v in rows], columns=["measure"] + labels)
    hot = C.most_different({key: v for key, _, v in rows})
    row_outliers = {i: C.outlier_column(v) for i, (_, _, v) in enumerate(rows)} \
        if len(labels) >= 3 else {}

    def _shade(frame: pd.DataFrame) -> pd.DataFrame:
        css = pd.DataFrame("", index=frame.index, columns=frame.columns)
        for i, col in row_outliers.items():
            sp = C.spread(rows[i][2])
            if col is not None and sp is not None and sp > 1.05:
                css.iloc[i, 1 + col] = "background-color: rgba(255, 127, 14, 0.18)"
        if hot is not None:
            i = [r[0] for r in rows].index(hot[0])
            cols = range(len(labels)) if len(labels) == 2 else [hot[1]]
            for c in cols:
                css.iloc[i, 1 + c] = "background-color: rgba(255, 127, 14, 0.55); " \
                                     "font-weight: bold"
        return css

    styled = df.style.apply(_shade, axis=None).format(
        lambda v: core._fmt(v) if isinstance(v, (int, float)) or v is None else str(v),
        subset=labels)
    if figures.presentation_mode():      # an HTML table: its text scales with the talk CSS
        st.table(styled.hide(axis="index"))
    else:
        st.dataframe(styled, width="stretch", hide_index=True,
                     height=min(36 * len(df) + 40, 900))
    if hot is not None:
        hk, hc = hot
        vals = cmp.table[hk]
        who = " vs ".join(labels) if len(labels) == 2 else labels[hc]
        st.markdown(f"**Differs most:** {core.LABELS[hk]}: " + ", ".join(
            f"{lab} {core._fmt(v)}" for lab, v in zip(labels, vals)) + f" ({who}).")
    st.caption("Each model at its own temperature: " + ", ".join(
        f"{lab} τ = {t:.4g}" for lab, t in zip(labels, cmp.temperatures))
        + ". Dark cell: the measure that differs most, as a fold (max / min; for signed "
        "measures 1 + range / max |v|), settings and the alpha grid's argmins left out; "
        "light cells (3+ sides): the side farthest from the others in its row, where the "
        "row differs by more than 5 %.")
    for note in cmp.notes:
        st.caption(f"Note: {note}")
    st.download_button("CSV", lambda: csv_safe(df).to_csv(index=False),
                       file_name="compare.csv", mime="text/csv", key="compare-csv",
                       on_click="ignore", icon=":material/download:")

views = []
with ui.section("Per-dataset arrays"):
    views = C.side_views(picked, cmp)
if not views:
    st.stop()
sampled = [v.label for v in views if any(len(v.rows[m]) < v.n[m] for m in C.MODS)]
if sampled:
    st.caption(f"Distributions of {', '.join(sampled)} are drawn from a seeded sample of "
               f"{C.MAX_ITEMS:,} rows per modality (conformity itself is exact, against "
               "all rows).")


def overlay(kind: str, title_x: str, values: dict, nbins: int = 60) -> go.Figure:
    """Two panels (image | text), one histogram per dataset in its colour."""
    fig = make_subplots(rows=1, cols=2, subplot_titles=("images", "captions"))
    for c, mod in enumerate(C.MODS, start=1):
        for v in views:
            x = values[v.label][mod]
            fig.add_trace(go.Histogram(
                x=x, name=v.label, legendgroup=v.label, showlegend=(c == 1),
                marker_color=colours[v.label], opacity=0.55, histnorm="probability density",
                nbinsx=nbins, hovertemplate=f"{v.label} ({mod})<br>{kind}≈%{{x:.3f}}"
                                            "<br>density=%{y:.3f}<extra></extra>"),
                row=1, col=c)
        fig.update_xaxes(title_text=title_x, row=1, col=c)
    fig.update_yaxes(title_text="density", row=1, col=1)
    fig.update_layout(barmode="overlay", legend_title_text="dataset")
    return fig


# ---------------------------------------------------------------- norms and conformity
with ui.section("Norm histograms"):
    st.subheader("Thin shells: norm histograms")
    rel = scale == "each side standardised"
    norms = {v.label: {m: (v.norms[m] / v.norms[m].mean() if rel else v.norms[m])
                       for m in C.MODS} for v in views}
    figures.show(overlay("‖v‖", "‖v‖ / mean" if rel else "raw norm ‖v‖", norms),
                 "Raw norms per modality, one colour per dataset (Double-Ellipsoid Sec. 3, "
                 "Fig. 4): a thin shell is a narrow peak; divide by each mean to compare "
                 "relative thickness across models of different scale.", key="compare-norms")

with ui.section("Conformity distributions"):
    st.subheader("Conformity distributions")
    conf = {v.label: {m: (C.zscore(v.conformity[m]) if rel else v.conformity[m])
                      for m in C.MODS} for v in views}
    figures.show(overlay("conformity", "conformity z-score (per side)" if rel else
                         "conformity (mean cosine to the modality)", conf),
                 "Exact conformity of every item (Double-Ellipsoid Def. 1, Eq. 10), per "
                 "modality and dataset.", key="compare-conformity")

# ---------------------------------------------------------------- Sep and spectra
left, right = st.columns(2)
with left, ui.section("Separability"):
    st.subheader("Sorted separability Sep(l)")
    fig = go.Figure()
    for v in views:
        fig.add_trace(go.Scatter(x=np.arange(1, len(v.sep_sorted) + 1), y=v.sep_sorted,
                                 mode="lines", name=v.label, line=dict(color=colours[v.label],
                                                                      width=2),
                                 hovertemplate=f"{v.label}<br>rank %{{x}}<br>Sep=%{{y:.3f}}"
                                               "<extra></extra>"))
    fig.add_hline(y=1.0, line_dash="dot", annotation_text="Sep = 1")
    fig.update_layout(xaxis_title="feature rank", yaxis_title="Sep(l)", yaxis_type="log")
    figures.show(fig, "Per-feature separability of images from texts, sorted "
                      "(Double-Ellipsoid Eq. 5, Fig. 2); above 1, a single feature "
                      "separates the modalities.", key="compare-sep", height=380)
with right, ui.section("Singular spectra"):
    st.subheader("Singular spectra")
    spec_mod = st.radio("Modality", ["image", "text"], horizontal=True,
                        key="compare_spec_mod")
    fig = go.Figure()
    for v in views:
        p = v.spectrum[spec_mod]
        er = v.effective_rank.get(spec_mod)
        name = v.label + (f" (eff. rank {er:.1f})" if isinstance(er, (int, float)) else "")
        fig.add_trace(go.Scatter(x=np.arange(1, len(p) + 1), y=np.where(p > 0, p, np.nan),
                                 mode="lines", name=name, line=dict(color=colours[v.label],
                                                                    width=2),
                                 hovertemplate=f"{v.label}<br>k=%{{x}}<br>p=%{{y:.2e}}"
                                               "<extra></extra>"))
    fig.update_layout(xaxis_title="k", yaxis_title="s_k / Σ s", yaxis_type="log",
                      xaxis_type="log")
    figures.show(fig, "Normalised singular values of the centred rows: the distribution "
                      "whose entropy is RankMe's effective rank (Garrido et al. 2023, Eq. 1).",
                 key="compare-spectra", height=380)

# ---------------------------------------------------------------- alpha shift
with ui.section("Alpha-shift loss curves"):
    st.subheader("Alpha-shift loss curves")
    fig = go.Figure()
    drawn = 0
    for v, t in zip(views, cmp.temperatures):
        if alpha_mod not in v.alpha:
            continue
        a, total, arg = v.alpha[alpha_mod]
        fig.add_trace(go.Scatter(x=a, y=total, mode="lines+markers", name=f"{v.label} "
                                 f"(τ {t:.3g})", line=dict(color=colours[v.label], width=2),
                                 marker=dict(size=5),
                                 hovertemplate=f"{v.label}<br>α=%{{x:.2f}}<br>loss=%{{y:.4f}}"
                                               "<extra></extra>"))
        if arg is not None:
            y = float(total[int(np.argmin(np.abs(a - arg)))])
            fig.add_trace(go.Scatter(x=[arg], y=[y], mode="markers", showlegend=False,
                                     marker=dict(symbol="star", size=14,
                                                 color=colours[v.label]),
                                     hovertemplate=f"{v.label} minimum at α=%{{x:.2f}}"
                                                   "<extra></extra>"))
        drawn += 1
    if drawn:
        fig.update_layout(xaxis_title="α (shift along the modality means)",
                          yaxis_title="contrastive loss")
        figures.show(fig, "The CLIP loss as each modality is moved along its mean, "
                          "v + α m (Double-Ellipsoid Sec. 5, Fig. 8), each model at its "
                          "own temperature; stars: each curve's minimum.",
                     key="compare-alpha")
    else:
        st.info("No alpha sweep recorded for these datasets (unpaired data).")

# ---------------------------------------------------------------- the gap (Liang Fig. 1)
with ui.section("The modality gap"):
    st.subheader("The modality gap, in pictures")
    ss = C.sides(picked)
    fig = make_subplots(rows=1, cols=len(ss), subplot_titles=labels,
                        horizontal_spacing=0.04)
    for c, (spec, side) in enumerate(zip(picked, ss), start=1):
        xy = C.gap_projection(spec, side)
        for mod in C.MODS:
            fig.add_trace(go.Scattergl(x=xy[mod][:, 0], y=xy[mod][:, 1], mode="markers",
                                       name="images" if mod == "image" else "captions",
                                       legendgroup=mod, showlegend=(c == 1),
                                       marker=dict(size=3, opacity=0.5),
                                       hoverinfo="skip"), row=1, col=c)
        fig.update_xaxes(showticklabels=False, row=1, col=c)
        fig.update_yaxes(showticklabels=False, row=1, col=c)
    figures.show(fig, "Each space's L2-normalised images and captions on their first two "
                      "principal components (a seeded sample of each): two separate cones "
                      "are the modality gap (Liang et al., NeurIPS 2022, Fig. 1; the bundled "
                      "gap-* datasets show it at random initialisation and after training).",
                 key="compare-gap", height=360)

# ---------------------------------------------------------------- row-aligned pairs
with ui.section("Same items, two spaces"):
    st.subheader("The same items in two spaces")
    c1, c2, c3 = st.columns(3)
    a_lab = c1.selectbox("Space A", labels, index=0, key="compare_pair_a")
    others = [lab for lab in labels if lab != a_lab]
    b_lab = c2.selectbox("Space B", others, index=0, key="compare_pair_b")
    pmod = c3.radio("Modality", ["image", "text"], horizontal=True, key="compare_pair_mod")
    i, j = labels.index(a_lab), labels.index(b_lab)
    pr = cmp.pair(a_lab, b_lab, pmod)
    if not pr.aligned or pr.cka is None:
        st.info(f"Rows do not align ({pr.reason}), so the cross-space measures are "
                "left out.")
    else:
        m = st.columns(4)
        m[0].metric("linear CKA", f"{pr.cka:.3f}", help="Kornblith et al. 2019: 1 = "
                    "the same space up to rotation and scale.")
        m[1].metric(f"mutual-kNN@{pr.mutual_knn_k}", f"{pr.mutual_knn:.3f}",
                    help="Huh et al. 2024: mean overlap of each item's k nearest "
                         "neighbours in the two spaces. " + measures.MUTUAL_KNN_NOTE)
        m[2].metric("conformity Spearman", f"{pr.conformity_spearman:.3f}",
                    help="Do the two spaces agree on which items are typical?")
        m[3].metric("aligned items", f"{pr.n_used:,}")
        st.caption(f"Aligned: {pr.reason}." + (f" {pr.note}." if pr.note else ""))
        pv = C.pair_view(picked, i, j, pmod)
        sa, sb = C.sides(picked)[i], C.sides(picked)[j]
        pos = C.scatter_positions(pv)
        hover = [C.item_label(sa, pmod, pv.rows_a[p])[:120] for p in pos]
        fig = go.Figure(go.Scattergl(
            x=pv.conf_a[pos], y=pv.conf_b[pos], mode="markers", name=pmod,
            customdata=np.asarray(pos)[:, None], text=hover,
            marker=dict(size=5, opacity=0.6, color=pv.rank_gap[pos],
                        coloraxis="coloraxis"),
            hovertemplate="%{text}<br>A: %{x:.3f}<br>B: %{y:.3f}<extra></extra>"))
        lo = float(min(pv.conf_a.min(), pv.conf_b.min()))
        hi = float(max(pv.conf_a.max(), pv.conf_b.max()))
        fig.update_layout(xaxis_title=f"conformity under {a_lab}",
                          yaxis_title=f"conformity under {b_lab}",
                          coloraxis=dict(colorscale="RdBu", cmid=0,
                                         colorbar=dict(title="rank A − B")))
        event = figures.show(fig, "Each item's conformity (Double-Ellipsoid Def. 1) "
                                  "under A and under B; colour: its percentile under A "
                                  "minus under B. Click or box-select items to see "
                                  "them below.", key="compare-pair", on_select="rerun",
                             selection_mode=("points", "box", "lasso"))
        chosen = selection.rows_from_event(event, fig).get(pmod, np.array([], int))
        if len(chosen):
            st.markdown(f"**Selected ({len(chosen)}):**")
            figures.gallery([(C.item_thumb(sa, pmod, pv.rows_a[p]),
                              f"{C.item_label(sa, pmod, pv.rows_a[p])[:90]}\n"
                              f"A {pv.conf_a[p]:.5g} · B {pv.conf_b[p]:.5g}")
                             for p in chosen[:12]])
        top, bottom = C.disagreements(pv, 8)
        for title, picks in ((f"Typical under {a_lab}, atypical under {b_lab}", top),
                             (f"Typical under {b_lab}, atypical under {a_lab}", bottom)):
            st.markdown(f"**{title}**")
            figures.gallery([(C.item_thumb(sa, pmod, pv.rows_a[p]),
                              f"{C.item_label(sa, pmod, pv.rows_a[p])[:90]}\n"
                              f"A {pv.conf_a[p]:.5g} · B {pv.conf_b[p]:.5g} "
                              f"(percentile gap {pv.rank_gap[p]:+.2f})")
                             for p in picks])

# ---------------------------------------------------------------- all pairs
with ui.section("All cross-space pairs"):
    st.subheader("Cross-space similarity of every pair")
    figures.table(pd.DataFrame([{
        "A": p.a, "B": p.b, "modality": p.modality, "aligned": p.aligned,
        "CKA": p.cka, f"mutual-kNN@{k}": p.mutual_knn,
        "conformity Spearman": p.conformity_spearman, "rows": p.n_used,
        "why (not) aligned": p.reason} for p in cmp.pairs]), key="compare-pairs",
        caption="Row alignment is decided from the data (same image ids or captions in "
                "the same order, or snapshots of one dataset), never assumed. "
                + measures.MUTUAL_KNN_NOTE)
