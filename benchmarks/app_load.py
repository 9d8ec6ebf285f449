"""Load check for the training playground: N people using the Voila app on one machine at once.

One Voila server on 127.0.0.1 (each page it serves gets its own Python kernel); N Chromium pages
open it one after another, then all press Run at the same moment. The script reports whether
every run finished with its curves drawn and no error on its page, and the memory (RSS) of each
kernel, sampled every half second.

    .venv/bin/python benchmarks/app_load.py --instances 10 --steps 20 --labels 200
    .venv/bin/python benchmarks/app_load.py --instances 1            # one app at default settings

Needs Debian's chromium and the playwright package (as tests/test_browser.py, whose helpers it uses).
Loopback only, bounded by --timeout. Kernels run torch on one thread each (--threads 1, the default)
so ten of them share a small machine politely; timings are not the point, working and memory are.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import threading
import time
from pathlib import Path

import psutil

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
from test_browser import (  # the browser helpers live with the browser test
    CHROMIUM,
    assert_page_clean,
    free_port,
    open_app,
    points,
    set_slider,
    start_voila,
    wait_for_server,
)


class MemorySampler(threading.Thread):
    """Peak RSS of each kernel process under the Voila server, sampled in the background."""

    def __init__(self, server: psutil.Process, every: float = 0.5):
        super().__init__(daemon=True)
        self.server, self.every, self.peaks, self.peak_total = server, every, {}, 0
        self.done = threading.Event()

    def run(self) -> None:
        while not self.done.is_set():
            total = 0
            for proc in self.server.children(recursive=True):
                try:
                    if "ipykernel" not in " ".join(proc.cmdline()):
                        continue
                    rss = proc.memory_info().rss
                except psutil.Error:
                    continue
                total += rss
                self.peaks[proc.pid] = max(self.peaks.get(proc.pid, 0), rss)
            self.peak_total = max(self.peak_total, total)
            self.done.wait(self.every)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--instances", type=int, default=10, help="browser pages, each with its own kernel")
    parser.add_argument("--steps", type=int, default=0, help="pre-training steps (0: the app's default budget)")
    parser.add_argument("--labels", type=int, default=0, help="labelled examples (0: the app's default)")
    parser.add_argument("--timeout", type=float, default=900, help="seconds to wait for every run to finish")
    parser.add_argument("--threads", type=int, default=1, help="torch threads per kernel (0: torch's default)")
    parser.add_argument("--shots", type=Path, default=None, help="folder for a screenshot of every page")
    args = parser.parse_args()

    from playwright.sync_api import expect, sync_playwright

    if args.threads:
        os.environ["OMP_NUM_THREADS"] = str(args.threads)  # inherited by Voila and its kernels
    folder = Path(tempfile.mkdtemp(prefix="app_load_"))
    port = free_port()
    server = start_voila(port, folder / "voila.log")
    sampler = MemorySampler(psutil.Process(server.pid))
    results: dict = {
        "instances": args.instances,
        "threads": args.threads or "default",
        "steps": args.steps or "default",
        "labels": args.labels or "default",
    }
    try:
        wait_for_server(port, server)
        sampler.start()
        with sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=str(CHROMIUM), args=["--no-sandbox"])
            t0 = time.monotonic()
            pages = [
                open_app(browser, f"http://127.0.0.1:{port}/", width=1600, height=1400) for _ in range(args.instances)
            ]
            results["seconds_to_open_all"] = round(time.monotonic() - t0, 1)
            for page, _ in pages:
                if args.steps:
                    page.locator("button", has_text="steps").click()
                    set_slider(page, "Pre-training budget", args.steps)
                if args.labels:
                    set_slider(page, "Labelled examples", args.labels)
            t0 = time.monotonic()
            for page, _ in pages:  # press Run everywhere, then wait for all of them
                page.locator("button[title='Run']").click()
            finished, problems = 0, []
            for i, (page, watch) in enumerate(pages):
                left = max(1.0, args.timeout - (time.monotonic() - t0))
                try:
                    expect(page.locator(".tk-status")).to_contain_text("Run 1: Finished", timeout=left * 1000)
                    drawn = points(page)
                    assert drawn["run1-loss"] > 0 and drawn["run1-accuracy"] > 0, f"curves missing: {drawn}"
                    assert_page_clean(page, watch)
                    finished += 1
                except AssertionError as err:
                    problems.append(f"page {i + 1}: {err}")
                if args.shots:
                    args.shots.mkdir(parents=True, exist_ok=True)
                    page.screenshot(path=str(args.shots / f"instance-{i + 1}.png"), full_page=True)
            results["seconds_to_finish_all"] = round(time.monotonic() - t0, 1)
            results["finished"], results["problems"] = finished, problems
            browser.close()
    finally:
        sampler.done.set()
        server.terminate()
        server.wait(30)
    peaks = sorted(sampler.peaks.values())
    results["kernel_peak_rss_mb"] = [round(p / 2**20) for p in peaks]
    results["max_kernel_rss_mb"] = round(max(peaks, default=0) / 2**20)
    results["peak_total_kernels_rss_mb"] = round(sampler.peak_total / 2**20)
    print(json.dumps(results, indent=1))
    if results.get("finished") != args.instances:
        sys.exit(1)


if __name__ == "__main__":
    main()
