"""Benchmark: clipgeom.report.build_report on synthetic pairs, per stage.

Goal (issue): the full report on 100,000 x 512 image/text pairs in under
60 s. Data: ``clipgeom.synthetic.two_shells(n, dim)``, timed separately.
The per-stage breakdown comes from build_report's ``progress`` callback:
each stage message is time-stamped, and a stage lasts until the next one
(the last until build_report returns).

    .venv/bin/python bench/report.py                    # 100,000 pairs, 1 run
    .venv/bin/python bench/report.py --n 20000 --repeat 3
    .venv/bin/python bench/report.py --profile 25       # + cProfile top functions
"""

from __future__ import annotations

import time

import numpy as np

import _common as C

GOAL_S = 60.0


def main() -> None:
    p = C.parser(__doc__.splitlines()[0], n=100_000, repeat=1)
    p.add_argument("--profile", type=int, default=0, metavar="K",
                   help="also run once under cProfile and print the top K functions "
                        "by cumulative time")
    args = p.parse_args()

    from clipgeom.report import build_report
    from clipgeom.synthetic import two_shells

    C.header("report", args)
    res: dict = {"name": "report", "n": args.n, "dim": args.dim}

    t0 = time.perf_counter()
    data = two_shells(args.n, args.dim, seed=args.seed)
    image, text = data.image, data.text
    del data
    res["gen_s"] = round(time.perf_counter() - t0, 2)
    print(f"data: two_shells({args.n:,}, {args.dim}) in {res['gen_s']:.1f} s "
          "(not part of the report time)", flush=True)
    pairs = np.arange(args.n)

    rss_before = C.current_rss_mb()
    gen_peak = C.peak_rss_mb()
    reset = C.reset_peak_rss()
    times = C.Timings()
    stage_runs: list[list[tuple[str, float]]] = []
    for i in range(max(1, args.repeat)):
        stamps: list[tuple[str, float]] = []
        c0 = time.process_time()
        t0 = time.perf_counter()
        rep = build_report(image, text, pairs, pairs,
                           progress=lambda msg: stamps.append((msg, time.perf_counter())))
        t1 = time.perf_counter()
        times.append(t1 - t0)
        times.cpu.append(time.process_time() - c0)
        # stage k runs from its message to the next one; time before the
        # first message (argument handling) goes to the first stage.
        stages = []
        for k, (msg, ts) in enumerate(stamps):
            start = t0 if k == 0 else ts
            end = stamps[k + 1][1] if k + 1 < len(stamps) else t1
            stages.append((msg, end - start))
        stage_runs.append(stages)
        print(f"  build_report run {i + 1}/{args.repeat}: {times[-1]:.2f} s "
              f"(CPU {times.cpu[-1]:.1f} s; load average {C.loadavg()})", flush=True)

    best = int(np.argmin(times))
    print(f"build_report(N={args.n:,}, d={args.dim}): {times.summary()}  [goal < {GOAL_S:.0f} s]")
    print(f"per stage (run {best + 1}, the fastest; share of its total):")
    for msg, dt in stage_runs[best]:
        extra = ""
        if len(stage_runs) > 1:
            vals = [dict(r).get(msg, float("nan")) for r in stage_runs]
            extra = f"   (runs: {', '.join(f'{v:.2f}' for v in vals)})"
        print(f"  {dt:8.2f} s  {100 * dt / times[best]:5.1f}%  {msg}{extra}")
    if reset:
        res["working_mb"] = round(C.peak_rss_mb() - rss_before, 1)
        print(f"memory: RSS before build_report {rss_before:.0f} MiB (peak during data generation "
              f"{gen_peak:.0f} MiB); build_report's own working memory (peak during it - RSS "
              f"before) {res['working_mb']:.0f} MiB")
    if len(stage_runs) > 1:
        mins = {m: min(dict(r)[m] for r in stage_runs) for m, _ in stage_runs[0]}
        print(f"sum of each stage's best time over the runs: {sum(mins.values()):.2f} s "
              "(an estimate of the unloaded time when other jobs share the machine)")
        res["stage_best_sum_s"] = round(sum(mins.values()), 2)
    print(f"report sanity: loss on {rep['loss']['n_pairs_used']} pairs = {rep['loss']['total']:.4f}, "
          f"image I1 = {rep['image']['isotropy']['I1']:.3f}, "
          f"conformity KL at alpha 0 = {rep['conformity_kl']['at_zero']:.4f}")

    if args.profile:
        import cProfile
        import pstats
        prof = cProfile.Profile()
        prof.enable()
        build_report(image, text, pairs, pairs)
        prof.disable()
        print(f"\ncProfile (one more run, with profiler overhead), top {args.profile} by "
              "cumulative time:")
        pstats.Stats(prof).sort_stats("cumulative").print_stats(args.profile)

    res.update(report_s=times.as_dict(),
               stages=[{"stage": m, "s": round(s, 3)} for m, s in stage_runs[best]])
    res["rows"] = [{"what": f"build_report N={args.n:,} pairs, d={args.dim} "
                            f"(+ {res['gen_s']:.1f} s two_shells generation, not counted)",
                    "goal": f"< {GOAL_S:.0f} s", "measured": C.fmt_t(res["report_s"]),
                    "ok": times.best < GOAL_S}]
    top = sorted(stage_runs[best], key=lambda x: -x[1])[:3]
    res["rows"].append({"what": "  largest stages (fastest run)", "goal": "(info)",
                        "measured": "; ".join(f"{m}: {s:.1f} s" for m, s in top), "ok": None})
    if "stage_best_sum_s" in res:
        res["rows"].append({"what": "  sum of per-stage best times over the runs", "goal": "(info)",
                            "measured": f"{res['stage_best_sum_s']:.1f} s", "ok": None})
    if "working_mb" in res:
        res["rows"].append({"what": "  build_report's own working memory", "goal": "(info)",
                            "measured": f"{res['working_mb']:.0f} MiB", "ok": None})
    C.emit(res)


if __name__ == "__main__":
    main()
