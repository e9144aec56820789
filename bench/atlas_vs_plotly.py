"""Apple's embedding-atlas Streamlit component vs clipgeom's plotly Scattergl
sample, for item scatters of 100,000 and 1,000,000 points.

Not part of the dashboard and not run by bench/run_all.py: it needs a venv of
its own with embedding-atlas (which the product does not depend on):

    python3.11 -m venv /tmp/atlas-venv
    /tmp/atlas-venv/bin/pip install -r requirements.txt embedding-atlas==0.26.0 playwright==1.65.2
    /tmp/atlas-venv/bin/python bench/atlas_vs_plotly.py

For each case it starts a fresh ``streamlit run bench/atlas_eval/app.py`` on
127.0.0.1, opens it in Debian's headless Chromium (never a downloaded one)
with every request to another host blocked (the product must work offline),
and prints:

  element_s  page navigation -> the chart's canvas exists
  ui_s       (atlas) -> its table shows row 0, i.e. DuckDB-WASM holds the data
  draw_s     -> the chart's pixels hold coloured points and stop changing
             (two identical screenshots in a row)
  heap_mb    the page's JS heap (performance.memory.usedJSHeapSize, precise)
  browser_mb Chromium's whole process tree, peak summed PSS (workers, GPU process)
  server_mb  the Streamlit process's peak RSS (VmHWM)
  sent_mb    bytes the page received: HTTP (CDP encodedDataLength) + websocket
             frames; plus, separately, what the route served for the CDN URLs
             in the "localcdn" variants (workers' requests are not in CDP's count)
  blocked    requests to other hosts, all blocked (offline check)

Variants: ``plotly`` (seeded 20,000-point sample, as the dashboard);
``atlas`` (every point, as shipped, offline); ``atlas-localcdn`` (as atlas,
but the two DuckDB-WASM files the component fetches from a CDN are answered
from the copies inside the embedding_atlas wheel itself, to see how far it gets
if that were fixed); ``atlas-localcdn-webgpu`` (also --enable-unsafe-webgpu,
which gives Chromium a software WebGPU adapter). After a draw, a rectangle
selection is made (plotly: box tool; atlas: shift+drag) and the rows that
reached Python are read from the page; if the atlas scatter is not drawn but
its table is, the "image" bar of its modality chart is clicked instead.
Timings are wall-clock on whatever machine runs it: on a shared 2-core box
they vary by +-50% with the load.
"""

from __future__ import annotations

import argparse
import base64
import io
import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
APP = ROOT / "bench" / "atlas_eval" / "app.py"
CHROMIUM = os.environ.get("CLIPGEOM_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--no-first-run", "--disable-sync",
                 "--enable-precise-memory-info"]
DUCKDB_CDN = "https://cdn.jsdelivr.net/npm/@duckdb/duckdb-wasm@"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(port: int) -> subprocess.Popen:
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    proc = subprocess.Popen(
        [sys.executable, "-m", "streamlit", "run", str(APP), "--server.headless", "true",
         "--server.address", "127.0.0.1", "--server.port", str(port),
         "--browser.gatherUsageStats", "false", "--server.fileWatcherType", "none"],
        cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 90
    while True:
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/_stcore/health", timeout=2)
            return proc
        except OSError:
            if proc.poll() is not None or time.time() > deadline:
                raise RuntimeError("streamlit did not start")
            time.sleep(0.5)


def stop(proc: subprocess.Popen) -> None:
    proc.terminate()
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        proc.kill()


def vm_hwm_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def browser_pss_mb() -> float:
    """Summed PSS of every Chromium process started under this script."""
    import psutil

    total = 0
    for p in psutil.Process(os.getpid()).children(recursive=True):
        try:
            if "chrom" in p.name():
                total += p.memory_full_info().pss
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            pass
    return total / 2**20


def coloured_fraction(png: bytes) -> float:
    """Share of pixels that are clearly coloured (points), not grey/white UI."""
    from PIL import Image
    import numpy as np

    a = np.asarray(Image.open(io.BytesIO(png)).convert("RGB")).astype(np.int16)
    spread = a.max(axis=2) - a.min(axis=2)
    return float((spread > 60).mean())


def duckdb_local_files() -> dict[str, Path]:
    """The wheel's own copies of the DuckDB-WASM files the component asks a CDN for."""
    import embedding_atlas

    assets = Path(embedding_atlas.__file__).parent / "static" / "assets"
    pick = {}
    for cdn_name in ("duckdb-eh.wasm", "duckdb-mvp.wasm", "duckdb-browser-eh.worker.js",
                     "duckdb-browser-mvp.worker.js"):
        stem, ext = cdn_name.rsplit(".", 1)
        for f in assets.iterdir():
            if f.name.startswith(stem + "-") and f.name.endswith("." + ext):
                pick[cdn_name] = f
    return pick


CASES = {
    # name: (app mode, serve the DuckDB-WASM CDN files from the wheel, extra Chromium flags)
    "plotly": ("plotly", False, []),
    "atlas": ("atlas", False, []),
    "atlas-localcdn": ("atlas", True, []),
    "atlas-localcdn-webgpu": ("atlas", True, ["--enable-unsafe-webgpu"]),
}
FIRST_ROW = "caption 0 of a image item"           # row 0 of the app's data, in the table
FATAL = ("importScripts", "Unrecognized type", "WebGPU is unavailable")


def run_case(browser, case: str, n: int, shots: Path, draw_timeout: float,
             extra_query: str = "") -> dict:
    mode, local_cdn, _ = CASES[case]
    port = free_port()
    server = start_server(port)
    url = f"http://127.0.0.1:{port}/?mode={mode}&n={n}{extra_query}"
    res = {"case": case, "n": n, "points_sent": n if mode == "atlas" else min(n, 20_000)}
    blocked, cdn_served, console, errors = [], [0], [], []
    local = duckdb_local_files() if local_cdn else {}
    ctx = browser.new_context(viewport={"width": 1400, "height": 1000})

    def route(r):
        u = r.request.url
        if u.startswith(("http://127.0.0.1", "ws://127.0.0.1", "data:", "blob:")):
            return r.continue_()
        if local_cdn and u.startswith(DUCKDB_CDN):
            f = local.get(u.rsplit("/", 1)[-1])
            if f is not None:
                body = f.read_bytes()
                cdn_served[0] += len(body)
                ctype = "application/wasm" if f.suffix == ".wasm" else "text/javascript"
                return r.fulfill(status=200, body=body, content_type=ctype,
                                 headers={"Access-Control-Allow-Origin": "*"})
        blocked.append(u)
        return r.abort()

    ctx.route("**/*", route)                 # covers the component's workers too
    page = ctx.new_page()
    page.on("console", lambda m: console.append(f"{m.type}: {m.text}"[:300])
            if m.type == "error" else None)
    page.on("pageerror", lambda e: errors.append(str(e)[:300]))
    cdp = ctx.new_cdp_session(page)
    cdp.send("Network.enable")
    got = {"http": 0, "ws": 0}

    def on_finished(ev):
        got["http"] += int(ev.get("encodedDataLength", 0))

    def on_frame(ev):
        r = ev["response"]
        data = r.get("payloadData", "")
        got["ws"] += len(base64.b64decode(data)) if r.get("opcode") == 2 else len(data)

    cdp.on("Network.loadingFinished", on_finished)
    cdp.on("Network.webSocketFrameReceived", on_frame)

    server_idle = vm_hwm_mb(server.pid)
    peak_browser = 0.0
    frame = page.frame_locator('iframe[title*="embedding_atlas"]')
    t0 = time.perf_counter()
    page.goto(url, wait_until="commit")
    drawn, el_at, last, prev_t, chart, why, ui_at = (None,) * 7
    while time.perf_counter() < t0 + draw_timeout:
        if chart is None:
            if mode == "atlas":
                if page.locator('iframe[title*="embedding_atlas"]').count() \
                        and frame.locator("canvas").count():
                    chart = frame.locator("canvas").first      # the embedding view
            elif page.locator(".js-plotly-plot canvas").count():
                chart = page.locator(".js-plotly-plot").first
            if chart is not None:
                el_at = time.perf_counter() - t0
        if chart is not None:
            try:
                png = chart.screenshot(animations="disabled", timeout=20_000)
            except Exception:                # re-rendering: try again
                png = None
            if png is not None and coloured_fraction(png) > 0.003 and png == last:
                drawn = prev_t                # the first of two identical frames
                break
            last, prev_t = png, time.perf_counter() - t0
        peak_browser = max(peak_browser, browser_pss_mb())
        msgs = errors + console
        if mode == "atlas" and page.locator('iframe[title*="embedding_atlas"]').count():
            try:
                if frame.get_by_text("WebGPU is unavailable").count():
                    msgs.append("WebGPU is unavailable (shown in the view)")
            except Exception:
                pass
        if mode == "atlas" and ui_at is None and frame.get_by_text(FIRST_ROW).count():
            ui_at = time.perf_counter() - t0  # DuckDB-WASM holds the data, the table shows
        why = next((m for m in msgs if any(f in m for f in FATAL)), None)
        # without WebGPU the rest of the atlas (table, charts) may still come up
        if why and ("WebGPU" not in why or ui_at is not None):
            time.sleep(2)
            break
        time.sleep(0.5)
    res["element_s"] = el_at
    res["ui_s"] = ui_at
    res["draw_s"] = drawn
    res["failed"] = None if drawn is not None else (why or f"not drawn in {draw_timeout:.0f}s")
    res["heap_mb"] = page.evaluate("performance.memory.usedJSHeapSize") / 2**20
    res["browser_mb"] = max(peak_browser, browser_pss_mb())
    res["server_idle_mb"] = server_idle
    res["server_mb"] = vm_hwm_mb(server.pid)
    res["sent_mb"] = (got["http"] + got["ws"]) / 2**20
    res["ws_mb"] = got["ws"] / 2**20
    res["cdn_local_mb"] = cdn_served[0] / 2**20
    res["blocked"] = sorted(set(blocked))
    res["errors"] = (errors + console)[:6]
    res["webgl"] = page.evaluate("""() => { const c = document.createElement('canvas');
        const g = c.getContext('webgl2') || c.getContext('webgl'); if (!g) return null;
        const e = g.getExtension('WEBGL_debug_renderer_info');
        return e ? g.getParameter(e.UNMASKED_RENDERER_WEBGL) : 'webgl'; }""")
    res["webgpu"] = page.evaluate("""async () => { if (!navigator.gpu) return null;
        const a = await navigator.gpu.requestAdapter(); return a ? 'adapter' : 'no adapter'; }""")
    tag = f"{case}_{n}"
    page.screenshot(path=str(shots / f"{tag}.png"))

    # ---- a rectangle selection, then what reached Python
    res["selection"] = res["selection_s"] = res["component_value"] = None
    hit = page.get_by_text("selected rows:")
    before = hit.first.inner_text() if hit.count() else None
    if drawn is not None:
        box = chart.bounding_box()
        x0, y0 = box["x"] + box["width"] * 0.2, box["y"] + box["height"] * 0.3
        x1, y1 = box["x"] + box["width"] * 0.45, box["y"] + box["height"] * 0.6
        if mode == "atlas":
            page.keyboard.down("Shift")          # shift+drag = rectangle ("marquee")
        else:
            page.locator('.modebar-btn[data-val="select"]').first.click()
        page.mouse.move(x0, y0)
        page.mouse.down()
        for k in range(1, 11):
            page.mouse.move(x0 + (x1 - x0) * k / 10, y0 + (y1 - y0) * k / 10)
        page.mouse.up()
        if mode == "atlas":
            page.keyboard.up("Shift")
    elif mode == "atlas" and ui_at is not None:
        # the scatter is not drawn, but the cross-filter still reports a predicate:
        # click the "image" bar of the modality chart (right-hand panel)
        labels = frame.get_by_text("image", exact=True)
        for i in range(labels.count()):
            b = labels.nth(i).bounding_box()
            if b and b["x"] > 0.6 * 1400:
                page.mouse.click(b["x"] + b["width"] + 150, b["y"] + b["height"] / 2)
                res["selection_via"] = "modality bar click (scatter not drawn)"
                break
    if res.get("selection_via") or (drawn is not None):
        t_sel = time.perf_counter()
        while time.perf_counter() - t_sel < 90:
            hit = page.get_by_text("selected rows:")
            if hit.count() and hit.first.inner_text() != before:
                res["selection_s"] = time.perf_counter() - t_sel
                res["selection"] = hit.first.inner_text()
                break
            time.sleep(0.5)
        time.sleep(1)
        res["ws_selection_mb"] = got["ws"] / 2**20 - res["ws_mb"]   # the rerun it caused
        value = page.locator('[data-testid="stJson"]')
        res["component_value"] = value.first.inner_text()[:600] if value.count() else None
        page.screenshot(path=str(shots / f"{tag}_selected.png"))
    ctx.close()
    stop(server)
    return res


def fmt(v, spec=".1f"):
    return "-" if v is None else format(v, spec)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[100_000, 1_000_000])
    ap.add_argument("--cases", nargs="+", choices=list(CASES),
                    default=["plotly", "atlas", "atlas-localcdn", "atlas-localcdn-webgpu"])
    ap.add_argument("--timeout", type=float, default=300.0, help="seconds to wait for a draw")
    ap.add_argument("--shots", type=Path, default=Path("/tmp/atlas_eval_shots"))
    ap.add_argument("--native-strings", action="store_true",
                    help="send pandas 3 string columns as they are (Arrow LargeUtf8)")
    args = ap.parse_args()
    args.shots.mkdir(parents=True, exist_ok=True)

    from playwright.sync_api import sync_playwright

    results = []
    with sync_playwright() as p:
        for case in args.cases:
            for n in args.sizes:
                # a fresh browser per case, so its memory is the case's own
                browser = p.chromium.launch(executable_path=CHROMIUM, headless=True,
                                            args=CHROMIUM_ARGS + CASES[case][2])
                try:
                    r = run_case(browser, case, n, args.shots, args.timeout,
                                 "&strings=native" if args.native_strings else "")
                finally:
                    browser.close()
                results.append(r)
                print(json.dumps(r), flush=True)

    print()
    print("| case | points in data | points sent to browser | element s | atlas table up s | drawn s | JS heap MB "
          "| browser PSS MB | server peak RSS MB | sent to browser MB | selection -> Python |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|")
    for r in results:
        sent = fmt(r["sent_mb"]) + (f" + {r['cdn_local_mb']:.1f} wasm/js" if r["cdn_local_mb"]
                                    else "")
        drawn = fmt(r["draw_s"]) if r["draw_s"] is not None else f"no: {r['failed'][:70]}"
        sel = (f"{r['selection']} in {r['selection_s']:.1f}s" if r["selection"] else "-")
        print(f"| {r['case']} | {r['n']:,} | {r['points_sent']:,} | {fmt(r['element_s'])} "
              f"| {fmt(r['ui_s'])} "
              f"| {drawn} | {fmt(r['heap_mb'])} | {fmt(r['browser_mb'])} "
              f"| {fmt(r['server_mb'])} | {sent} | {sel} |")
    print()
    for r in results:
        if r["blocked"]:
            print(f"{r['case']} {r['n']:,}: blocked off-machine requests: {r['blocked']}")
        if r.get("ws_selection_mb") is not None:
            print(f"{r['case']} {r['n']:,}: websocket bytes of the rerun after the selection: "
                  f"{r['ws_selection_mb']:.1f} MB")
        if r["component_value"]:
            print(f"{r['case']} {r['n']:,}: component value: {r['component_value']}")
    for r in results:
        print(f"{r['case']}: webgl={r['webgl']} webgpu={r['webgpu']}")


if __name__ == "__main__":
    main()
