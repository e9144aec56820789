"""A small synthetic dataset: two offset Gaussian ellipsoids ("shells").

Used by tests and, until the bundled demo exists, by the dashboard. It is
labelled synthetic everywhere it is shown. It imitates the structure the
Double-Ellipsoid paper reports for CLIP, with known ground truth:

* pair k shares a latent z_k ~ N(0, I_d): image_k = m_i + A_i (z_k + e_k),
  text_k = m_t + A_t (z_k + f_k), e, f ~ N(0, noise^2 I), so pairs match;
* A_i = R diag(s) with a long-tailed scale spectrum s (an ellipsoid, Fig. 5)
  and a random rotation R (a tilted one, Eq. 6); A_t = A_i diag(u) with u
  drawn from [0.6, 1.4], so the text ellipsoid differs in shape but its
  directions still correspond to the image ones (pairs are retrievable);
* the means m_i, m_t differ strongly on a few "tag" features (separability,
  Eq. 5) and have ||m|| / ||sigma|| near 1 (Sec. 4).

In high dimension each set is a thin shell around its mean (Eq. 1-4).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class SyntheticPairs:
    image: np.ndarray        # float32 [n, d]
    text: np.ndarray         # float32 [n, d]
    image_mean: np.ndarray   # the true means m_i, m_t
    text_mean: np.ndarray
    image_cov: np.ndarray    # the true covariances A (1 + noise^2) A^T
    text_cov: np.ndarray
    captions: list[str]


def _ellipsoid(d: int, rng: np.random.Generator, tail: float) -> np.ndarray:
    scales = rng.pareto(tail, d) + 1.0
    scales /= np.sqrt(np.mean(scales ** 2))        # unit RMS scale
    q, _ = np.linalg.qr(rng.standard_normal((d, d)))
    return q * scales                                # = Q diag(scales)


def two_shells(n: int = 2000, dim: int = 64, *, seed: int = 0, noise: float = 0.6,
               offset: float = 1.0, n_tags: int = 4, tail: float = 3.0
               ) -> SyntheticPairs:
    """Generate ``n`` pairs of synthetic "image" and "text" embeddings.

    ``offset`` sets ||m|| / ||sigma|| of each modality; ``n_tags`` features
    carry opposite large means in the two modalities (modality tags).
    """
    rng = np.random.default_rng(seed)
    a_i = _ellipsoid(dim, rng, tail)
    a_t = a_i * rng.uniform(0.6, 1.4, dim)
    var_scale = 1.0 + noise ** 2
    sigma_norm = np.sqrt(dim * var_scale)            # E||A(z+e)||^2 = tr(A A^T)(1+noise^2)
    means = []
    for sign in (1.0, -1.0):
        m = rng.standard_normal(dim) * 0.3
        m[:n_tags] += sign * 3.0
        m[n_tags:2 * n_tags] += 2.0                  # shared offset: both far from origin
        means.append(m * offset * sigma_norm / np.linalg.norm(m))
    z = rng.standard_normal((n, dim))
    image = means[0] + (z + noise * rng.standard_normal((n, dim))) @ a_i.T
    text = means[1] + (z + noise * rng.standard_normal((n, dim))) @ a_t.T
    captions = [f"synthetic pair {k}" for k in range(n)]
    return SyntheticPairs(image=image.astype(np.float32), text=text.astype(np.float32),
                          image_mean=means[0], text_mean=means[1],
                          image_cov=var_scale * a_i @ a_i.T,
                          text_cov=var_scale * a_t @ a_t.T, captions=captions)
