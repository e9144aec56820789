"""clipgeom.threads: the thread policy of the hot kernels is applied and put back,
also when blocks nest and when two threads (two dashboard sessions) overlap."""

import threading

import numpy as np
import pytest
import torch
from threadpoolctl import threadpool_info, threadpool_limits

from clipgeom import loss, synthetic, threads


def _blas():
    return sorted({int(i["num_threads"]) for i in threadpool_info() if i["user_api"] == "blas"})


@pytest.fixture
def two_threads():
    """torch and BLAS at 2 threads (tests start BLAS at 1: conftest), restored after."""
    saved = torch.get_num_threads()
    torch.set_num_threads(2)
    with threadpool_limits(limits=2, user_api="blas"):
        yield
    torch.set_num_threads(saved)


def test_limit_sets_and_restores_torch_blas_and_faiss(two_threads):
    import faiss

    omp = faiss.omp_get_max_threads()
    assert torch.get_num_threads() == 2 and _blas() == [2]
    with threads.limit(1) as n:
        assert n == 1
        assert torch.get_num_threads() == 1
        assert _blas() == [1]
        assert faiss.omp_get_max_threads() == 1
        assert threads.current()["limit"] == 1
    assert torch.get_num_threads() == 2 and _blas() == [2]
    assert faiss.omp_get_max_threads() == omp
    assert threads.current()["limit"] is None
    with threads.limit(None) as n:                 # no limit: nothing touched
        assert n is None and torch.get_num_threads() == 2


def test_nested_blocks_keep_the_smallest_limit(two_threads):
    with threads.limit(1):
        with threads.limit(2):
            assert torch.get_num_threads() == 1 and _blas() == [1]
        assert torch.get_num_threads() == 1
    assert torch.get_num_threads() == 2 and _blas() == [2]
    with threads.limit(2):
        with threads.limit(1):
            assert torch.get_num_threads() == 1
        assert torch.get_num_threads() == 2        # back to the outer block's limit
    assert torch.get_num_threads() == 2


def test_restored_after_an_error(two_threads):
    with pytest.raises(RuntimeError):
        with threads.limit(1):
            raise RuntimeError("kernel failed")
    assert torch.get_num_threads() == 2 and _blas() == [2]


def test_overlapping_blocks_in_two_threads(two_threads):
    """Session A enters, session B enters, A leaves: B still runs on one thread;
    the originals come back when B leaves."""
    a_in, b_in, a_out = threading.Event(), threading.Event(), threading.Event()
    seen = {}

    def session_a():
        with threads.limit(1):
            a_in.set()
            b_in.wait(10)
        a_out.set()

    def session_b():
        a_in.wait(10)
        with threads.limit(1):
            b_in.set()
            a_out.wait(10)
            seen["b_after_a_left"] = torch.get_num_threads()

    ta, tb = threading.Thread(target=session_a), threading.Thread(target=session_b)
    ta.start()
    tb.start()
    ta.join(20)
    tb.join(20)
    assert seen["b_after_a_left"] == 1
    assert torch.get_num_threads() == 2 and _blas() == [2]


def test_policy_reads_the_table_and_the_environment(monkeypatch, two_threads):
    monkeypatch.delenv("CLIPGEOM_KERNEL_THREADS", raising=False)
    assert set(threads.KERNELS) >= {"alpha_sweep", "loss", "exact_conformity", "summary",
                                    "faiss_search"}
    for k in threads.KERNELS:
        assert threads.threads_for(k) == threads.POLICY[k]
    monkeypatch.setitem(threads.POLICY, "summary", 1)
    with threads.policy("summary") as n:
        assert n == 1 and torch.get_num_threads() == 1
    monkeypatch.setenv("CLIPGEOM_KERNEL_THREADS", "0")          # library defaults
    with threads.policy("summary") as n:
        assert n is None and torch.get_num_threads() == 2
    monkeypatch.setenv("CLIPGEOM_KERNEL_THREADS", "1")
    assert all(threads.threads_for(k) == 1 for k in threads.KERNELS)
    monkeypatch.setenv("CLIPGEOM_KERNEL_THREADS", "many")
    with pytest.raises(ValueError, match="CLIPGEOM_KERNEL_THREADS"):
        threads.threads_for("loss")
    with pytest.raises(ValueError, match="unknown kernel"):
        threads.threads_for("everything")


def test_one_thread_gives_the_same_sweep(two_threads):
    """The policy changes speed, not numbers (float32 sums in another order)."""
    syn = synthetic.two_shells(300, 32, seed=4)
    vi, vt = np.asarray(syn.image, np.float32), np.asarray(syn.text, np.float32)
    alphas = np.linspace(0, 1, 5)
    with threads.limit(1):
        one = loss.alpha_sweep(vi, vt, alphas, "image", 0.05)
    with threads.limit(2):
        two = loss.alpha_sweep(vi, vt, alphas, "image", 0.05)
    np.testing.assert_allclose(one.total, two.total, rtol=1e-5)
    np.testing.assert_allclose(one.uniformity, two.uniformity, rtol=1e-5)
