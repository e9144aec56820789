"""Tests for clipgeom.labels on cases with known answers."""

import numpy as np
import pytest

from clipgeom.errors import InputError
from clipgeom.labels import linear_probe_accuracy, zero_shot_accuracy


def test_zero_shot_known_answer():
    rng = np.random.default_rng(0)
    c, d = 5, 8
    class_text = np.eye(c, d) * rng.uniform(0.5, 4.0, size=(c, 1))   # norms must not matter
    true = np.repeat(np.arange(c), 4)                                  # 20 images
    image = np.eye(c, d)[true] * 10.0 + 0.05 * rng.normal(size=(20, d)) + 0.0
    labels = true.copy()
    labels[[1, 6, 13]] = (labels[[1, 6, 13]] + 1) % c                  # 3 wrong labels
    assert zero_shot_accuracy(image, class_text, labels) == pytest.approx(17 / 20)
    assert zero_shot_accuracy(image, class_text, true.astype(float)) == 1.0


def test_zero_shot_input_checks():
    x = np.ones((3, 4))
    with pytest.raises(InputError, match="outside 0..1"):
        zero_shot_accuracy(x, np.eye(2, 4), [0, 1, 2])
    with pytest.raises(InputError, match="one label per row"):
        zero_shot_accuracy(x, np.eye(2, 4), [0, 1])
    with pytest.raises(InputError, match="whole-number"):
        zero_shot_accuracy(x, np.eye(2, 4), [0, 0.5, 1])


def test_linear_probe_separable_and_random():
    rng = np.random.default_rng(1)
    n, d = 300, 16
    y = np.repeat(np.arange(3), n // 3)
    centers = rng.normal(size=(3, d)) * 10
    x = centers[y] + rng.normal(size=(n, d))
    assert linear_probe_accuracy(x, y, seed=0) == 1.0
    noise = rng.normal(size=(400, d))
    rand = rng.integers(0, 2, size=400)
    acc = linear_probe_accuracy(noise, rand, seed=0)
    assert 0.35 < acc < 0.65                                          # chance is 0.5
    assert linear_probe_accuracy(noise, rand, seed=0) == acc          # deterministic


def test_linear_probe_input_checks():
    x = np.random.default_rng(2).normal(size=(10, 3))
    with pytest.raises(InputError, match="two different labels"):
        linear_probe_accuracy(x, np.zeros(10, dtype=int))
    with pytest.raises(InputError, match="only one row"):
        linear_probe_accuracy(x, [0] * 9 + [1])
