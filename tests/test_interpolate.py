"""Tests for clipgeom.interpolate against analytic paths."""

import numpy as np
import pytest

from clipgeom.errors import InputError
from clipgeom.interpolate import slerp, vslerp


def _angle(u, v):
    return np.arccos(np.clip(u @ v / np.linalg.norm(u) / np.linalg.norm(v), -1, 1))


def test_slerp_analytic_quarter_circle_with_linear_norm():
    a = np.array([1.0, 0.0, 0.0])
    b = np.array([0.0, 3.0, 0.0])
    t = np.linspace(0, 1, 9)
    path = slerp(a, b, t)
    expected = (1 + 2 * t)[:, None] * np.column_stack(
        [np.cos(t * np.pi / 2), np.sin(t * np.pi / 2), np.zeros_like(t)])
    np.testing.assert_allclose(path, expected, atol=1e-12)


def test_slerp_endpoints_constant_speed_and_norm():
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=32) * 2, rng.normal(size=32) + 1
    np.testing.assert_allclose(slerp(a, b, 0.0), a, atol=1e-12)
    np.testing.assert_allclose(slerp(a, b, 1.0), b, atol=1e-12)
    t = np.linspace(0, 1, 11)
    path = slerp(a, b, t)
    steps = [_angle(path[i], path[i + 1]) for i in range(10)]
    np.testing.assert_allclose(steps, _angle(a, b) / 10, rtol=1e-9)
    np.testing.assert_allclose(np.linalg.norm(path, axis=1),
                               (1 - t) * np.linalg.norm(a) + t * np.linalg.norm(b), rtol=1e-12)
    # The path stays in the plane of a and b.
    basis = np.linalg.qr(np.column_stack([a, b]))[0]
    np.testing.assert_allclose(path - path @ basis @ basis.T, 0.0, atol=1e-12)
    assert slerp(a, b, 0.5).shape == (32,)


def test_slerp_nearly_parallel_and_opposite():
    a = np.array([1.0, 2.0, 3.0])
    out = slerp(a, 2.5 * a, np.array([0.0, 0.5, 1.0]))
    np.testing.assert_allclose(out, np.outer([1.0, 1.75, 2.5], a), atol=1e-12)
    b = a + np.array([1e-9, 0.0, 0.0])
    out = slerp(a, b, 0.5)
    assert np.isfinite(out).all()
    np.testing.assert_allclose(out, (a + b) / 2, atol=1e-12)
    with pytest.raises(InputError, match="opposite"):
        slerp(a, -a, 0.5)
    with pytest.raises(InputError, match="between 0 and 1"):
        slerp(a, b, 1.5)
    with pytest.raises(InputError, match="all-zero"):
        slerp(a, np.zeros(3), 0.5)


def test_vslerp_alpha_zero_is_slerp_and_alpha_one_rotates_around_mean():
    rng = np.random.default_rng(1)
    a, b, m = rng.normal(size=8), rng.normal(size=8), rng.normal(size=8) * 5
    t = np.linspace(0, 1, 7)
    np.testing.assert_allclose(vslerp(a, b, t, 0.0, m), slerp(a, b, t), atol=1e-12)
    # a = m + u, b = m + w with u, w orthogonal and of equal length r:
    # the path is m + r (cos(t pi/2) u^ + sin(t pi/2) w^).
    q = np.linalg.qr(rng.normal(size=(8, 2)))[0]
    r = 2.0
    u, w = r * q[:, 0], r * q[:, 1]
    path = vslerp(m + u, m + w, t, 1.0, m)
    expected = m + np.outer(np.cos(t * np.pi / 2), u) + np.outer(np.sin(t * np.pi / 2), w)
    np.testing.assert_allclose(path, expected, atol=1e-12)
    np.testing.assert_allclose(np.linalg.norm(path - m, axis=1), r, atol=1e-12)
    with pytest.raises(InputError, match="mean"):
        vslerp(a, b, 0.5, 1.0, m[:4])


# ---- nearest items along a path (the Search & interpolation page) -----------


def test_nearest_cosine_matches_brute_force_across_chunks(rng):
    from clipgeom.interpolate import nearest_cosine

    x = rng.standard_normal((700, 9))
    x[5] = 0.0                                  # a zero row never matches
    q = rng.standard_normal((4, 9))
    rows, cos = nearest_cosine(q, x, 6, chunk=64)
    norms = np.linalg.norm(x, axis=1)
    full = (q / np.linalg.norm(q, axis=1, keepdims=True)) @ (
        x / np.where(norms > 0, norms, np.inf)[:, None]).T
    full[:, 5] = -np.inf
    want = np.argsort(-full, axis=1, kind="stable")[:, :6]
    assert (rows == want).all()
    np.testing.assert_allclose(cos, np.take_along_axis(full, want, 1), atol=1e-12)
    with pytest.raises(InputError, match="zero"):
        nearest_cosine(np.zeros(9), x)


def test_compare_paths_endpoints_and_shell(rng):
    """Both paths start and end at the endpoints; vSLERP around the mean keeps
    ||x - m|| between the endpoints' (it stays on the shell), SLERP does not
    have to; the nearest rows are the brute-force argmax of the cosine."""
    from clipgeom.interpolate import compare_paths

    m = np.r_[8.0, 3.0, np.zeros(6)]
    x = m + rng.standard_normal((300, 8))
    a, b = x[0], x[1]
    th = np.linspace(0, 1, 9)
    res = compare_paths(a, b, x.mean(0), th, 1.0, {"image": x})
    for key in ("slerp", "vslerp"):
        p = res[key]["points"]
        np.testing.assert_allclose(p[0], a, atol=1e-9)
        np.testing.assert_allclose(p[-1], b, atol=1e-9)
        u = p / np.linalg.norm(p, axis=1, keepdims=True)
        xn = x / np.linalg.norm(x, axis=1, keepdims=True)
        assert (res[key]["nearest_image"] == (u @ xn.T).argmax(1)).all()
        mm = x.mean(0)
        np.testing.assert_allclose(res[key]["cos_to_mean"],
                                   u @ (mm / np.linalg.norm(mm)), rtol=1e-10)
    mm = x.mean(0)
    r = np.linalg.norm(res["vslerp"]["points"] - mm, axis=1)
    lo, hi = sorted([np.linalg.norm(a - mm), np.linalg.norm(b - mm)])
    assert (r >= lo - 1e-9).all() and (r <= hi + 1e-9).all()


def test_nearest_cosine_leaves_out_excluded_rows(rng):
    """Excluded rows never match (brute force with those columns masked), in any
    chunk; when every row is excluded the result says so (row -1)."""
    from clipgeom.interpolate import nearest_cosine

    x = rng.standard_normal((200, 5))
    q = x[[3, 150]] + 1e-3                         # each query sits on a row...
    rows, _ = nearest_cosine(q, x, 1)
    assert rows[:, 0].tolist() == [3, 150]
    rows, cos = nearest_cosine(q, x, 2, chunk=32, exclude=[3, 150, 151])
    full = (q / np.linalg.norm(q, axis=1, keepdims=True)) @ (
        x / np.linalg.norm(x, axis=1, keepdims=True)).T
    full[:, [3, 150, 151]] = -np.inf
    want = np.argsort(-full, axis=1, kind="stable")[:, :2]
    assert (rows == want).all()
    assert not np.isin(rows, [3, 150, 151]).any()
    rows, cos = nearest_cosine(x[:1], x[:2], 1, exclude=[0, 1])
    assert rows[0, 0] == -1 and np.isneginf(cos[0, 0])


def test_repeats_marks_consecutive_duplicates_only():
    from clipgeom.interpolate import repeats

    assert repeats([4, 4, 7, 4, 4, 4, 9]).tolist() == [False, True, False, False, True,
                                                       True, False]
    assert repeats([]).tolist() == []


def test_compare_paths_excludes_endpoints_and_measures_distance_to_mean(rng):
    """With the endpoints left out, no point of either path reports them as its
    nearest item (without, both ends do); ||x - m|| is the brute-force distance,
    and on a sphere around m vSLERP (alpha = 1) keeps it at the radius while
    SLERP dips inside (Sec. 7.2)."""
    from clipgeom.interpolate import compare_paths

    m = np.r_[10.0, np.zeros(7)]
    d = rng.standard_normal((400, 8))
    x = m + 2.0 * d / np.linalg.norm(d, axis=1, keepdims=True)     # shell of radius 2
    a, b = x[0], x[1]
    th = np.linspace(0, 1, 7)
    plain = compare_paths(a, b, m, th, 1.0, {"image": x})
    assert plain["slerp"]["nearest_image"][0] == 0 and plain["slerp"]["nearest_image"][-1] == 1
    res = compare_paths(a, b, m, th, 1.0, {"image": x}, exclude={"image": [0, 1]})
    for key in ("slerp", "vslerp"):
        near = res[key]["nearest_image"]
        assert not np.isin(near, [0, 1]).any()
        p = res[key]["points"]
        u = p / np.linalg.norm(p, axis=1, keepdims=True)
        cos = u @ (x / np.linalg.norm(x, axis=1, keepdims=True)).T
        cos[:, [0, 1]] = -np.inf
        assert (near == cos.argmax(1)).all()
        np.testing.assert_allclose(res[key]["dist_to_mean"], np.linalg.norm(p - m, axis=1),
                                   rtol=1e-12)
        assert res[key]["nearest_image_repeat"].tolist() == \
            [False] + [bool(near[i] == near[i - 1]) for i in range(1, len(near))]
    np.testing.assert_allclose(res["vslerp"]["dist_to_mean"], 2.0, rtol=1e-9)
    assert res["slerp"]["dist_to_mean"][3] < 2.0 - 1e-3
