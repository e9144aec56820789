"""Print the bundled demo's geometry report as the README's Markdown table.

    python bench/demo_geometry.py [DATASET]

Every figure comes from clipgeom.report (the same code and the same stored
report as the dashboard's Home page) at the demo model's own learned
temperature (1 / its logit scale, to 4 decimals), plus the Spearman correlation of conformity with the
generated world's exact concept frequencies (Prediction 1).
"""

import sys

import numpy as np
import pandas as pd

from clipgeom import conformity, report, store


def main(name: str = "demo") -> None:
    ds = store.open_dataset(name)
    tau = ds.manifest["model"]["temperature"]     # the learned τ, as the Home page uses
    rep = report.stored_report(ds, temperature=tau)
    im, tx = rep["image"], rep["text"]
    fi = conformity.fit_conformity(ds.image_emb)
    ft = conformity.fit_conformity(ds.text_emb)
    rho_i = conformity.frequency_correlation(
        fi.exact, ds.images["concept_frequency"].to_numpy(float))
    # odd captions make no claim, so they have no frequency (empty cells)
    txt_freq = pd.to_numeric(ds.texts["caption_frequency"], errors="coerce").to_numpy(float)
    ok = np.isfinite(txt_freq) & (txt_freq > 0)
    rho_t = conformity.frequency_correlation(ft.exact[ok], txt_freq[ok])
    sw = rep["alpha_sweep"]
    def p_text(p: float) -> str:
        return f"p = {p:.1g}" if p > 0 else "p < 1e-300"

    rows = [
        ("pairs, dimension", f"{rep['n_pairs']:,} pairs, d = {rep['dim']}"),
        ("learned temperature τ (1 / logit scale)", f"{tau:.4f}"),
        ("features with Sep > 1 (Eq. 5)", f"{rep['separability']['n_above_1']} of {rep['dim']}"),
        ("SVM on the two most separable features (Fig. 2)",
         f"accuracy {rep['separability']['svm_top2']['accuracy']:.3f}"),
        ("linear separability, all features", f"{rep['separability']['linear_accuracy']:.3f}"),
        ("shell: E‖v − m‖ ± std, image / text (Eq. 3-4)",
         f"{im['shell_radius']:.3f} ± {im['shell_std']:.3f} / "
         f"{tx['shell_radius']:.3f} ± {tx['shell_std']:.3f}"),
        ("relative error of √E‖x‖² vs μ_norm, image / text",
         f"{im['rms_rel_error']:.4f} / {tx['rms_rel_error']:.4f}"),
        ("‖m‖/‖σ‖, image / text (paper 0.94 / 1.03)",
         f"{im['mean_over_sigma']:.3f} / {tx['mean_over_sigma']:.3f}"),
        ("cos(m_image, m_text)", f"{rep['modality_gap']['mean_cosine']:.3f}"),
        ("ODD > 1 share of features, image / text (Eq. 6)",
         f"{im['odd']['frac_above_1']:.2f} / {tx['odd']['frac_above_1']:.2f}"),
        ("α-shift argmin, image / text / both (Fig. 6; paper ≈ 0)",
         f"{sw['image']['argmin']:+.1f} / {sw['text']['argmin']:+.1f} / "
         f"{sw['both']['argmin']:+.1f}"),
        ("conformity KL(image‖text) argmin α (Fig. 11)", f"{rep['conformity_kl']['argmin']:+.1f}"),
        ("conformity vs a·cos(m, v) + b: Pearson, image / text (Fig. 9; paper 0.9998)",
         f"{im['conformity']['pearson']:.4f} / {tx['conformity']['pearson']:.4f}"),
        ("a_paper vs Prop. 1, image", f"{im['conformity']['a_paper']:.3f} vs "
                                      f"{im['conformity']['theory_a_paper']:.3f}"),
        ("Spearman ρ, image conformity vs concept frequency (Prediction 1)",
         f"{rho_i['rho']:+.3f} ({p_text(rho_i['p_value'])}, n = {rho_i['n']:,})"),
        ("Spearman ρ, caption conformity vs caption frequency",
         f"{rho_t['rho']:+.3f} ({p_text(rho_t['p_value'])}, n = {rho_t['n']:,})"),
        ("paired retrieval top-1 i2t / t2i (all pairs as one batch)",
         f"{rep['loss']['accuracy_i2t']:.3f} / {rep['loss']['accuracy_t2i']:.3f}"),
    ]
    print("| measure | demo |\n|---|---|")
    for k, v in rows:
        print(f"| {k} | {v} |")


if __name__ == "__main__":
    main(*sys.argv[1:2])
