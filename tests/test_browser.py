"""The playground in a real browser: Voila serves notebooks/playground.ipynb, Chromium drives it.

Needs Debian's `chromium` (`apt-get install chromium`; .ci/run installs it) and the `playwright`
Python package, launched on that binary: no `playwright install`, no browser download. Outside CI
the test is skipped when either is missing; in CI (CI=true) it fails instead.

Screenshots go to the test's tmp folder and the last ones are copied to $TEACHKIT_APP_SHOTS
(default: app_shots in the temporary folder) for a person to look at.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
CHROMIUM = Path("/usr/bin/chromium")
SHOTS = Path(os.environ.get("TEACHKIT_APP_SHOTS") or Path(tempfile.gettempdir()) / "app_shots")
# Voila's page links Font Awesome from a CDN; the same styles are bundled with it, so offline it is
# answered with an empty stylesheet. Any other request off this machine fails the test.
CDN_STYLES = "https://cdn.jsdelivr.net/npm/@fortawesome/"

pytestmark = pytest.mark.slow


def _require_browser():
    missing = []
    if not CHROMIUM.exists():
        missing.append(f"{CHROMIUM} (apt-get install chromium)")
    try:
        import playwright  # noqa: F401
    except ImportError:
        missing.append("the playwright package (pip install -e '.[dev]')")
    if missing:
        message = "The browser test needs " + " and ".join(missing)
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_voila(port: int, log: Path) -> subprocess.Popen:
    """Voila on loopback only (`--Voila.ip`: the `--ip` alias is ignored), serving the playground."""
    env = {**os.environ, "OMP_WAIT_POLICY": "PASSIVE", "HF_HUB_OFFLINE": "1"}
    # Tracebacks shown, so that an error in the notebook reaches the page text the test reads.
    cmd = [sys.executable, "-m", "voila", "notebooks/playground.ipynb", "--no-browser", f"--port={port}",
           "--Voila.ip=127.0.0.1", "--show_tracebacks=True"]
    return subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=log.open("w"), stderr=subprocess.STDOUT)


def wait_for_server(port: int, proc: subprocess.Popen, *, timeout: float = 60) -> None:
    """Wait until Voila listens (a page request would start a kernel, so only connect)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"Voila exited with code {proc.returncode} before listening on port {port}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=2).close()
            return
        except OSError:
            time.sleep(0.5)
    raise TimeoutError(f"Voila did not listen on 127.0.0.1:{port} within {timeout:.0f} s")


def start_lab(port: int, folder: Path) -> subprocess.Popen:
    """JupyterLab on loopback, without a token, with its settings in a throwaway folder."""
    env = {**os.environ, "OMP_WAIT_POLICY": "PASSIVE", "HF_HUB_OFFLINE": "1",
           "JUPYTERLAB_WORKSPACES_DIR": str(folder / "workspaces"), "JUPYTERLAB_SETTINGS_DIR": str(folder / "settings"),
           "JUPYTER_RUNTIME_DIR": str(folder / "runtime")}
    cmd = [sys.executable, "-m", "jupyter", "lab", "--no-browser", f"--port={port}", "--ServerApp.ip=127.0.0.1",
           "--IdentityProvider.token=", "--ServerApp.password=", f"--ServerApp.root_dir={ROOT}", "--allow-root",
           f"--FileCheckpoints.checkpoint_dir={folder / 'checkpoints'}"]  # not in the repository
    return subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=(folder / "lab.log").open("w"), stderr=subprocess.STDOUT)


def _serve(start, folder: Path):
    port = free_port()
    proc = start(port, folder)
    try:
        wait_for_server(port, proc)
        yield f"http://127.0.0.1:{port}/", folder
    finally:
        proc.terminate()
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()


@pytest.fixture(scope="module")
def voila(tmp_path_factory):
    _require_browser()
    yield from _serve(lambda port, folder: start_voila(port, folder / "voila.log"), tmp_path_factory.mktemp("voila"))


@pytest.fixture
def lab(tmp_path_factory):
    _require_browser()
    yield from _serve(start_lab, tmp_path_factory.mktemp("lab"))


class PageWatch:
    """Collects what must not happen on the page: JS errors, failed requests, off-machine requests."""

    def __init__(self, page):
        self.problems: list[str] = []
        page.on("console", lambda m: m.type == "error" and self.problems.append(f"console error: {m.text}"))
        page.on("pageerror", lambda e: self.problems.append(f"page error: {e}"))
        page.route("**/*", self._route)

    def _route(self, route):
        url = route.request.url
        if url.startswith(("http://127.0.0.1", "data:", "blob:")):
            route.continue_()
        elif url.startswith(CDN_STYLES):
            route.fulfill(status=200, content_type="text/css", body="")
        else:
            self.problems.append(f"request off this machine: {url}")
            route.abort()


def open_app(browser, url: str, *, width: int = 1280, height: int = 1150):
    """A page showing the app; the default size is a lecture-hall projector's width (1280 px)."""
    page = browser.new_page(viewport={"width": width, "height": height})
    watch = PageWatch(page)
    page.goto(url, timeout=120_000)
    page.locator("button[title='Run']").wait_for(timeout=120_000)
    page.locator(".js-plotly-plot").wait_for(timeout=60_000)
    return page, watch


def set_slider(page, label: str, value) -> None:
    """Type a value into a slider's readout, as a user can (click the number, type, Enter)."""
    slider = page.locator(".widget-slider", has=page.locator(".widget-label", has_text=label))
    readout = slider.locator(".widget-readout")
    readout.click()
    page.keyboard.press("Control+A")
    page.keyboard.type(str(value))
    page.keyboard.press("Enter")


def points(page) -> dict[str, int]:
    """How many points each curve the browser draws has, by name ("run1-mlm", "run2-accuracy", ...)."""
    return page.evaluate("""() => Object.fromEntries((document.querySelector('.js-plotly-plot').data || [])
        .map(trace => [trace.meta, (trace.x || []).length]))""")


def status(page) -> str:
    return page.locator(".tk-status").inner_text()


def assert_page_clean(page, watch: PageWatch) -> None:
    text = page.locator("body").inner_text()
    assert "Loading widget" not in text, "a widget never rendered ('Loading widget...' is on the page)"
    # The page's HTML too: Voila puts a failed cell's output in the page even where it is not shown.
    markup = page.content()
    errors = [m for m in ("Traceback (most recent call last)", "There was an error when executing") if m in markup]
    errors += [m for m in ("Traceback", "Error:") if m in text]
    assert not errors, f"a Python error is on the page ({errors}):\n{text[-2000:]}"
    assert not watch.problems, "\n".join(watch.problems)


def shot(page, folder: Path, name: str) -> Path:
    path = folder / f"{name}.png"
    page.screenshot(path=str(path), full_page=True)
    return path


def test_playground_trains_stops_and_overlays_runs_in_voila(voila):
    from playwright.sync_api import expect, sync_playwright

    url, folder = voila
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=str(CHROMIUM), args=["--no-sandbox"])
        try:
            page, watch = open_app(browser, url)
            shots = [shot(page, folder, "1-opened")]
            assert points(page) == {"placeholder": 0}, "the plots should start empty"

            # Run 1: a long pre-training budget in steps, stopped as soon as the loss plot has points.
            page.locator("button", has_text="steps").click()
            set_slider(page, "Pre-training budget", 500)
            set_slider(page, "Labelled examples", 200)
            page.locator("button[title='Run']").click()
            page.wait_for_function("() => (document.querySelector('.js-plotly-plot').data || [])"
                                   ".some(t => t.meta === 'run1-mlm' && t.x.length >= 5)", timeout=180_000)
            shots.append(shot(page, folder, "2-pretraining-live"))
            page.locator("button[title='Stop']").click()
            expect(page.locator(".tk-status")).to_contain_text("Run 1: Stopped", timeout=60_000)
            first = points(page)["run1-mlm"]
            assert 5 <= first < 500, f"run 1 should have stopped early with its points kept, has {first}"

            # Run 2: change a slider, run to the end, and check it is drawn over run 1.
            set_slider(page, "Pre-training budget", 20)
            set_slider(page, "Mask rate", "0.4")
            page.locator("button[title='Run']").click()
            expect(page.locator(".tk-status")).to_contain_text("Run 2: Finished", timeout=240_000)
            shots.append(shot(page, folder, "3-two-runs"))
            drawn = points(page)
            assert drawn["run1-mlm"] == first, f"run 1's curve must stay as it was: {drawn}"
            assert drawn["run1-loss"] == 0, f"run 1 was stopped in pre-training, so it never fine-tuned: {drawn}"
            assert drawn["run2-mlm"] == drawn["run2-nsp"] == 20, f"run 2 pre-trains for 20 steps: {drawn}"
            assert drawn["run2-loss"] > 0 and drawn["run2-accuracy"] > 0, f"run 2 should have fine-tuned: {drawn}"
            rows = page.locator("table.tk-results tr")
            expect(rows).to_have_count(3)  # header + two runs
            expect(rows.nth(2)).to_contain_text("40%")
            assert_page_clean(page, watch)
        finally:
            browser.close()
    SHOTS.mkdir(parents=True, exist_ok=True)
    for path in shots:
        shutil.copy(path, SHOTS / f"voila-{path.name}")


def test_playground_renders_and_trains_in_jupyterlab(lab):
    """The same notebook opened in JupyterLab: run its cells, train once, see the curves."""
    from playwright.sync_api import expect, sync_playwright

    url, folder = lab
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=str(CHROMIUM), args=["--no-sandbox"])
        try:
            page = browser.new_page(viewport={"width": 1700, "height": 1300})
            watch = PageWatch(page)
            page.goto(url + "lab/tree/notebooks/playground.ipynb", timeout=120_000)
            page.get_by_text("Python 3 (ipykernel) | Idle").wait_for(timeout=120_000)
            page.locator(".lm-MenuBar-itemLabel", has_text="Run").click()
            page.locator(".lm-Menu-itemLabel").get_by_text("Run All Cells", exact=True).click()
            page.locator("button[title='Run']").wait_for(timeout=120_000)
            page.locator("button", has_text="steps").click()
            set_slider(page, "Pre-training budget", 15)
            set_slider(page, "Labelled examples", 100)
            page.locator("button[title='Run']").click()
            expect(page.locator(".tk-status")).to_contain_text("Run 1: Finished", timeout=240_000)
            path = shot(page, folder, "jupyterlab")
            drawn = points(page)
            assert drawn["run1-mlm"] == 15 and drawn["run1-loss"] > 0 and drawn["run1-accuracy"] > 0, drawn
            assert "Traceback" not in page.locator(".jp-OutputArea").first.inner_text()
            assert not watch.problems, "\n".join(watch.problems)
        finally:
            browser.close()
    SHOTS.mkdir(parents=True, exist_ok=True)
    shutil.copy(path, SHOTS / "jupyterlab.png")
