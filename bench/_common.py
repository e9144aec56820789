"""Shared helpers for the benchmarks in bench/ (not a test module).

Each benchmark is a script that prints human-readable figures and, as its
last line, ``BENCH_JSON {...}``: a machine-readable summary that
``bench/run_all.py`` turns into a markdown table. Timings are wall-clock
(``time.perf_counter``); repeated timings report best / median / worst,
because the machine may be shared with other jobs.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:          # run from anywhere without installing
    sys.path.insert(0, str(ROOT))

JSON_TAG = "BENCH_JSON "


def parser(description: str, *, n: int, dim: int = 512, repeat: int = 3) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--n", type=int, default=n, help=f"rows / pairs (default {n:,})")
    p.add_argument("--dim", type=int, default=dim, help=f"embedding width (default {dim})")
    p.add_argument("--repeat", type=int, default=repeat,
                   help=f"timed repetitions, best is reported (default {repeat})")
    p.add_argument("--seed", type=int, default=0)
    return p


def peak_rss_mb() -> float:
    """ru_maxrss of this process in MiB (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def current_rss_mb() -> float:
    """Resident set size right now (VmRSS), MiB."""
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    return float("nan")


def reset_peak_rss() -> bool:
    """Reset the kernel's peak-RSS mark (VmHWM, what ru_maxrss reads) if possible.

    Writing "5" to /proc/self/clear_refs (Linux >= 4.0) resets the high-water
    mark to the current RSS, so a later ru_maxrss is the peak of the code in
    between. Returns False where that is not supported.
    """
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
        return True
    except OSError:
        return False


class Timings(list):
    """Wall-clock seconds of each repetition (``cpu``: process CPU seconds, if recorded).

    On a shared machine, wall >> cpu / threads means the process was waiting
    for a core; cpu growing with the same work means threads spinning.
    """

    def __init__(self, *a):
        super().__init__(*a)
        self.cpu: list[float] = []

    @property
    def best(self) -> float:
        return min(self)

    @property
    def median(self) -> float:
        return statistics.median(self)

    @property
    def worst(self) -> float:
        return max(self)

    def summary(self) -> str:
        if len(self) == 1:
            return f"{self[0]:.3f} s (1 run)"
        return (f"best {self.best:.3f} s, median {self.median:.3f} s, worst {self.worst:.3f} s "
                f"({len(self)} runs; spread {100 * (self.worst - self.best) / self.best:.0f}%)")

    def as_dict(self) -> dict:
        d = {"runs": [round(t, 4) for t in self], "best": round(self.best, 4),
             "median": round(self.median, 4), "worst": round(self.worst, 4)}
        if self.cpu:
            d["cpu"] = [round(t, 3) for t in self.cpu]
        return d

    def cpu_summary(self) -> str:
        if not self.cpu:
            return ""
        return "process CPU time per run: " + ", ".join(f"{c:.2f} s" for c in self.cpu)


def fmt_t(d: dict) -> str:
    """A Timings.as_dict() as "best (of n; worst)" for the summary table."""
    if len(d["runs"]) == 1:
        return f"{d['best']:.2f} s (1 run)"
    return f"{d['best']:.2f} s (best of {len(d['runs'])}; worst {d['worst']:.2f} s)"


def repeat_timed(fn: Callable[[], object], repeat: int, label: str = "") -> tuple[Timings, object]:
    """Call ``fn`` ``repeat`` times; return the timings and the last result."""
    times = Timings()
    out = None
    for i in range(max(1, repeat)):
        c0 = time.process_time()
        t0 = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t0)
        times.cpu.append(time.process_time() - c0)
        if label:
            print(f"  {label} run {i + 1}/{repeat}: {times[-1]:.3f} s", flush=True)
    return times, out


def loadavg() -> str:
    try:
        return " ".join(f"{v:.2f}" for v in os.getloadavg())
    except OSError:
        return "n/a"


def thread_env() -> str:
    """The thread-count environment variables that are set (torch, OpenBLAS, faiss)."""
    names = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "OMP_WAIT_POLICY")
    set_ = [f"{k}={os.environ[k]}" for k in names if k in os.environ]
    return "threads: " + (", ".join(set_) if set_ else "library defaults")


def machine() -> dict:
    """nproc, CPU model, RAM and library versions."""
    info = {"nproc": os.cpu_count(), "cpu": platform.processor() or "unknown",
            "ram_gib": None, "python": platform.python_version()}
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=False).stdout
        for line in out.splitlines():
            if line.startswith("Model name:"):
                info["cpu"] = line.split(":", 1)[1].strip()
    except OSError:
        pass
    try:
        with open("/proc/meminfo") as fh:
            for line in fh:
                if line.startswith("MemTotal:"):
                    info["ram_gib"] = round(int(line.split()[1]) / 1024 ** 2, 1)
    except OSError:
        pass
    import numpy
    info["numpy"] = numpy.__version__
    if "torch" in sys.modules:
        torch = sys.modules["torch"]
        info["torch"] = torch.__version__
        info["torch_threads"] = torch.get_num_threads()
    return info


def header(name: str, args: argparse.Namespace) -> None:
    m = machine()
    print(f"# {name}: {' '.join(f'--{k}={v}' for k, v in vars(args).items())}")
    print(f"# machine: {m['nproc']} cpu ({m['cpu']}), {m['ram_gib']} GiB RAM, "
          f"python {m['python']}, numpy {m['numpy']}; {thread_env()}; load average {loadavg()}",
          flush=True)


def emit(result: dict) -> None:
    """Print peak RSS and the machine-readable summary line (last line of output)."""
    result.setdefault("peak_rss_mb", round(peak_rss_mb(), 1))
    result["loadavg_end"] = loadavg()
    print(f"peak RSS (ru_maxrss): {result['peak_rss_mb']:.0f} MiB")
    print(JSON_TAG + json.dumps(result), flush=True)
