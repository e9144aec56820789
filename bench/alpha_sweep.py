"""Benchmark: clipgeom.loss.alpha_sweep (21 alphas, one modality shifted).

Goal (issue): N = 25,000 pairs, d = 512, ``alpha_sweep(image, text, None,
"image")`` in under 60 s with peak memory under 2 GB.

Data: ``clipgeom.synthetic.two_shells(n, dim)`` (paired offset ellipsoids).
Memory: ru_maxrss of the whole process (Python + numpy + torch + the data)
is printed, and so is the sweep's own working memory: the peak RSS during
the sweep (the kernel's high-water mark is reset just before it, via
/proc/self/clear_refs) minus the RSS right before it (after data generation
and ``import torch``).

    .venv/bin/python bench/alpha_sweep.py                       # full size, 1 run
    .venv/bin/python bench/alpha_sweep.py --n 5000 --repeat 3
    .venv/bin/python bench/alpha_sweep.py --chunk 32 --torch-threads 1
"""

from __future__ import annotations

import time

import numpy as np

import _common as C

GOAL_S = 60.0
GOAL_MB = 2000.0


def main() -> None:
    p = C.parser(__doc__.splitlines()[0], n=25_000, repeat=1)
    p.add_argument("--modality", default="image", choices=["image", "text", "both"])
    p.add_argument("--chunk", type=int, default=None,
                   help="row chunk passed to alpha_sweep (default: the library's default)")
    p.add_argument("--torch-threads", type=int, default=None,
                   help="torch.set_num_threads before the sweep (default: torch's choice)")
    args = p.parse_args()

    import torch  # noqa: F401  (part of the baseline, as the brief asks)

    from clipgeom import loss
    from clipgeom.synthetic import two_shells

    if args.torch_threads:
        torch.set_num_threads(args.torch_threads)
    C.header("alpha_sweep", args)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} intra-op threads")
    res: dict = {"name": "alpha_sweep", "n": args.n, "dim": args.dim,
                 "modality": args.modality, "chunk": args.chunk,
                 "torch_threads": torch.get_num_threads()}

    t0 = time.perf_counter()
    data = two_shells(args.n, args.dim, seed=args.seed)
    image, text = data.image, data.text
    del data
    res["gen_s"] = round(time.perf_counter() - t0, 2)
    print(f"data: two_shells({args.n:,}, {args.dim}) in {res['gen_s']:.1f} s", flush=True)

    kwargs = {} if args.chunk is None else {"chunk": args.chunk}
    rss_before = C.current_rss_mb()
    peak_before = C.peak_rss_mb()
    print(f"baseline after data + import torch: RSS {rss_before:.0f} MiB "
          f"(process peak so far {peak_before:.0f} MiB)", flush=True)

    times = C.Timings()
    sweep_peaks = []
    sw = None
    for i in range(max(1, args.repeat)):
        base = C.current_rss_mb()
        reset = C.reset_peak_rss()
        c0 = time.process_time()
        t0 = time.perf_counter()
        sw = loss.alpha_sweep(image, text, None, args.modality, **kwargs)
        times.append(time.perf_counter() - t0)
        times.cpu.append(time.process_time() - c0)
        if reset:
            sweep_peaks.append(C.peak_rss_mb() - base)
        print(f"  alpha_sweep run {i + 1}/{args.repeat}: {times[-1]:.2f} s (CPU {times.cpu[-1]:.1f} s)"
              + (f", working memory {sweep_peaks[-1]:.0f} MiB" if reset else ""), flush=True)

    peak = C.peak_rss_mb()
    print(f"alpha_sweep(N={args.n:,}, d={args.dim}, {len(sw.alpha)} alphas, "
          f"modality={args.modality!r}): {times.summary()}  [goal < {GOAL_S:.0f} s]")
    print(f"  per alpha: {times.best / len(sw.alpha):.2f} s; argmin alpha {sw.argmin:+.1f}; "
          f"total loss at alpha=0: {sw.total[np.argmin(np.abs(sw.alpha))]:.4f}")
    if sweep_peaks:
        working = max(sweep_peaks)
        print(f"  sweep working memory (peak during sweep - RSS before): {working:.0f} MiB")
    else:
        working = peak - rss_before
        print(f"  sweep working memory (ru_maxrss - baseline RSS; peak reset unavailable): "
              f"{working:.0f} MiB")
    print(f"  process peak (ru_maxrss) {peak:.0f} MiB = baseline {rss_before:.0f} MiB + "
          f"{peak - rss_before:.0f} MiB  [goal < {GOAL_MB:.0f} MB]")
    res.update(sweep_s=times.as_dict(), baseline_rss_mb=round(rss_before, 1),
               working_mb=round(working, 1), peak_rss_mb=round(peak, 1),
               total_at_0=float(sw.total[np.argmin(np.abs(sw.alpha))]), argmin=sw.argmin)
    res["rows"] = [
        {"what": f"alpha_sweep N={args.n:,} d={args.dim}, 21 alphas, {args.modality!r}"
                 + (f", chunk={args.chunk}" if args.chunk else "")
                 + (f", {args.torch_threads} torch thread(s)" if args.torch_threads else ""),
         "goal": f"< {GOAL_S:.0f} s", "measured": C.fmt_t(res["sweep_s"]),
         "ok": times.best < GOAL_S},
        {"what": "  its peak memory: ru_maxrss (baseline + sweep working memory)",
         "goal": f"< {GOAL_MB:.0f} MB",
         "measured": f"{peak:.0f} MiB ({rss_before:.0f} + {working:.0f})",
         "ok": peak * 1.048576 < GOAL_MB},
    ]
    C.emit(res)


if __name__ == "__main__":
    main()
