"""The README's screenshots of the playground: a lecture's first comparison, at 1024x768, 1366x768 and 1920x1080.

Serves the app with Voila on 127.0.0.1, then, as a teacher would: run 1 from the course BERT (the
default), run 2 from its untrained twin, run 3 from 40 s of my own pre-training and run 4 from scratch,
each at 1,000 labels; then photographs the page at each of the sizes the browser tests check.

    .venv/bin/python benchmarks/app_screenshots.py --out docs

Needs Debian's chromium and the playwright package (as tests/test_browser.py, whose helpers it uses).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
from test_browser import SCREENS, free_port, launch, open_app, run_button, start_voila, wait_for_server  # noqa: E402

RUNS = ("course BERT", "course BERT, untrained", "my pre-training", "scratch")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=ROOT / "docs")
    args = parser.parse_args()
    from playwright.sync_api import expect, sync_playwright

    port = free_port()
    log = Path(tempfile.mkdtemp()) / "voila.log"
    server = start_voila(port, log)
    try:
        wait_for_server(port, server)
        with sync_playwright() as pw:
            browser = launch(pw)
            page, _ = open_app(browser, f"http://127.0.0.1:{port}/")
            for number, start in enumerate(RUNS, 1):
                page.locator(".tk-start_from select").select_option(start)
                run_button(page).click()
                expect(page.locator(".tk-status")).to_contain_text(f"Run {number}: Finished", timeout=900_000)
                print(f"run {number} ({start}): {page.locator('.tk-status').inner_text()}", flush=True)
            page.locator(".tk-start_from select").select_option("course BERT")
            for width, height in SCREENS:
                page.set_viewport_size({"width": width, "height": height})
                page.wait_for_timeout(1500)  # plotly refits the figure to the new window (responsive)
                path = args.out / f"playground-{width}x{height}.png"
                page.screenshot(path=str(path))
                print(f"wrote {path}")
            browser.close()
    finally:
        server.terminate()


if __name__ == "__main__":
    main()
