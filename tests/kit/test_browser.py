"""Every notebook in a real browser: JupyterLab driven by Debian's Chromium through Playwright.

For each notebook (found by glob, so a new one is covered the day it lands): "Run All" with no error
output; then each widget operated once, as a learner would after "Run All" (a slider, checkbox or choice,
then its button), with its output updated and no error; then "Shut Down Kernel" from JupyterLab's menu,
after which no process the kernel started, no scratch folder and no key of its namespaces is left.

The notebooks run side by side (3 at a time, ``$CELERYLAB_NOTEBOOKS_AT_ONCE``; tests/kit/sidebyside.py),
each in a browser context of its own on one JupyterLab, each still its own test that waits for its own
verdict. Nothing one notebook leaves can be blamed on another: the processes checked are those its own
kernel started (their ``CELERYLAB_OWNER``), the scratch folders those in its kernel's own temp folder
(tests/kit/jupyter_sessions.py), the keys those of its own namespaces.

JupyterLab is started here (a free loopback port, a token, its own config, runtime, settings and temp
folders, the notebooks copied so nothing is ever saved over the repo's), through the kit's process helpers
so it goes away with the test run. Screenshots land in ``.celerylab/artifacts/browser/`` (CI keeps them).
Slow: CI installs ``chromium`` from Debian's packages and runs ``pytest -m slow tests/kit/test_browser.py``.
Without ``/usr/bin/chromium`` the module is skipped, unless ``CELERYLAB_REQUIRE_BROWSER=1`` (CI) makes that
a failure.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import secrets
import shutil
import signal
import socket
import sys
import time
import urllib.request
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import pytest
import redis

from celerylab.engine import processes, runtime
from celerylab.engine.brokers import LOCAL_REDIS
from tests.kit.conftest import ROOT, is_gone
from tests.kit.jupyter_sessions import KERNELS_ENV, kernel_dir
from tests.kit.sidebyside import SideBySide, heaviest_first, selected

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
NOTEBOOKS = heaviest_first((ROOT / "notebooks").glob("*.ipynb"))  # the tests' order is the start order
ARTIFACTS = ROOT / ".celerylab" / "artifacts" / "browser"
RUN_ALL_SECONDS = 480  # the slowest notebook runs ~3 min on 2 shared cores
WIDGET_SECONDS = 180
STDERR = '[data-mime-type="application/vnd.jupyter.stderr"]'
# Lab settings: every cell in the page (JupyterLab 4 otherwise renders only the visible ones), nothing
# saved by itself, no news pop-up over the notebook.
SETTINGS = {
    "notebook-extension/tracker": {"windowingMode": "none"},
    "docmanager-extension/plugin": {"autosave": False},
    "apputils-extension/notification": {"fetchNews": "false", "checkForUpdates": False},
}

pytestmark = [pytest.mark.slow, pytest.mark.timeout(1200)]


def _require_browser() -> None:
    found = {"/usr/bin/chromium": CHROMIUM.exists(), "playwright": _has_playwright()}
    missing = [what for what, ok in found.items() if not ok]
    if not missing:
        return
    why = f"{' and '.join(missing)} missing: `apt-get install chromium` and `pip install -r requirements.txt`"
    if os.environ.get("CELERYLAB_REQUIRE_BROWSER") == "1":
        pytest.fail(why)
    pytest.skip(why)


def _has_playwright() -> bool:
    try:
        import playwright.async_api  # noqa: F401
    except ImportError:
        return False
    return True


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Lab:
    """A running JupyterLab: where to reach it, and the folders its kernels use."""

    url: str
    token: str
    runtime_dir: Path
    kernels_dir: Path  # a folder per notebook's kernel (tests/kit/jupyter_sessions.py)

    def temp_dir(self, notebook: Path) -> Path:
        """The TMPDIR of ``notebook``'s kernel: the scratch folders of its playgrounds land there."""
        return kernel_dir(self.kernels_dir, notebook.name) / "tmp"

    def api(self, path: str, method: str = "GET") -> object:
        request = urllib.request.Request(
            f"{self.url}{path}", method=method, headers={"Authorization": f"token {self.token}"}
        )
        with urllib.request.urlopen(request, timeout=10) as reply:
            body = reply.read()
        return json.loads(body) if body else None

    async def wait_kernel(self, notebook: str, seconds: float) -> int:
        """The pid of the kernel JupyterLab started for ``notebook`` (a bounded poll of its sessions)."""
        deadline = time.monotonic() + seconds
        while True:
            sessions = await asyncio.to_thread(self.api, "/api/sessions")
            ids = [s["kernel"]["id"] for s in sessions if s["path"].endswith(notebook)]
            if ids and (pid := await asyncio.to_thread(self.kernel_pid, ids[0])):
                return pid
            assert time.monotonic() < deadline, f"no kernel started for {notebook} within {seconds:.0f} s"
            await asyncio.sleep(0.2)

    def kernel_pid(self, kernel_id: str) -> int | None:
        """The kernel's process, found by its connection file (in this lab's own runtime folder)."""
        needle = f"kernel-{kernel_id}.json".encode()
        for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
            try:
                if needle in cmdline.read_bytes():
                    return int(cmdline.parent.name)
            except OSError:
                continue
        return None


@pytest.fixture(scope="module")
def lab(tmp_path_factory) -> Lab:
    _require_browser()
    base = tmp_path_factory.mktemp("jupyterlab")
    root, settings, temp = base / "root", base / "settings", base / "tmp"
    shutil.copytree(ROOT / "notebooks", root / "notebooks")  # "Run All" changes them: never the repo's
    temp.mkdir()
    for name, values in SETTINGS.items():
        path = settings / "@jupyterlab" / f"{name}.jupyterlab-settings"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(values))
    port, token = _free_port(), secrets.token_hex(16)
    env = {
        **os.environ,
        "JUPYTER_CONFIG_DIR": str(base / "config"),
        "JUPYTER_RUNTIME_DIR": str(base / "runtime"),
        "CELERYLAB_HOME": str(base / "state"),  # the server's; each kernel gets its own
        "TMPDIR": str(temp),
        KERNELS_ENV: str(base / "kernels"),
        "PYTHONPATH": str(ROOT),
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
    }
    env.pop("MPLBACKEND", None)  # the notebooks' own inline backend
    argv = [sys.executable, "-m", "jupyterlab", "--no-browser", "--allow-root", "--ServerApp.ip=127.0.0.1"]
    argv += [f"--ServerApp.port={port}", "--ServerApp.port_retries=0", f"--IdentityProvider.token={token}"]
    argv += [f"--ServerApp.root_dir={root}", f"--LabApp.user_settings_dir={settings}"]
    argv += [f"--LabApp.workspaces_dir={base / 'workspaces'}"]
    argv += ["--ServerApp.session_manager_class=tests.kit.jupyter_sessions.PerNotebookSessions"]
    proc = processes.spawn(argv, log_path=base / "jupyterlab.log", env=env, cwd=root)
    lab = Lab(f"http://127.0.0.1:{port}", token, base / "runtime", base / "kernels")
    try:
        deadline = time.monotonic() + 60
        while True:  # ready = its API answers (a bounded poll of an observable state)
            try:
                lab.api("/api/status")
                break
            except OSError:
                log = (base / "jupyterlab.log").read_text(errors="replace")[-2000:]
                assert proc.poll() is None, f"JupyterLab exited:\n{log}"
                assert time.monotonic() < deadline, f"JupyterLab did not answer within 60 s:\n{log}"
                time.sleep(0.2)
        yield lab
    finally:
        for kernel in _quietly(lambda: lab.api("/api/kernels")) or []:
            _quietly(lambda k=kernel: lab.api(f"/api/kernels/{k['id']}", "DELETE"))
        processes.kill_group(proc, signal.SIGTERM, wait=30)


def _quietly(call):
    try:
        return call()
    except OSError:
        return None


@contextlib.asynccontextmanager
async def _chromium(lab: Lab):
    """One Chromium for every notebook (each in a context of its own): what SideBySide runs them with."""
    from playwright.async_api import async_playwright

    async with async_playwright() as playwright:
        chromium = await playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            yield partial(in_the_browser, lab, chromium)
        finally:
            await chromium.close()


@pytest.fixture(scope="module")
def notebooks(request, lab) -> SideBySide:
    """Every selected notebook's run, started now, side by side; each test waits for its own verdict."""
    runs = SideBySide(selected(request, "test_notebook_in_the_browser"), partial(_chromium, lab)).start()
    try:
        yield runs
    finally:
        runs.stop()  # before JupyterLab goes: a run cut short closes its page first


# ---- what the page shows -------------------------------------------------------------------------

IDLE = "() => document.querySelector('.jp-Notebook-ExecutionIndicator')?.dataset.status === 'idle'"
KERNEL_IDLE = (  # the status bar's "Python 3 (ipykernel) | Idle": every message, a widget's included
    "() => [...document.querySelectorAll('.jp-StatusBar-TextItem')].some(e => / Idle$/.test(e.innerText))"
)
PROMPTS = "[...document.querySelectorAll('.jp-CodeCell .jp-InputPrompt')].map(e => e.textContent.trim())"
NONE_RAN = f"() => {PROMPTS}.every(p => !/\\d/.test(p))"
ALL_RAN = """() => {
    const prompts = PROMPTS;
    const status = document.querySelector('.jp-Notebook-ExecutionIndicator')?.dataset.status;
    // Done: nothing queued or running, something ran (an error stops "Run All": the rest stay unnumbered).
    return status === 'idle' && !prompts.includes('[*]:') && prompts.some(p => /\\d/.test(p));
}""".replace("PROMPTS", PROMPTS)
PAINTED = """async (el) => {
    await Promise.all([...el.querySelectorAll('img')].map(i => i.decode().catch(() => null)));
    await new Promise(done => requestAnimationFrame(() => requestAnimationFrame(done)));
    return true;
}"""
SLOW_RUN = 4.0  # seconds: a run this long must have shown its progress line ("running for ...")
WATCH_PROGRESS = """(el) => {
    window.__sawProgress = false;
    new MutationObserver(() => { if (el.innerText.includes('running for')) window.__sawProgress = true; })
        .observe(el, {subtree: true, childList: true, characterData: true});
}"""
# A digest of a widget's rendered content (its plots included), to see it change.
DIGEST = """(root) => {
    let h = 0; const s = root.innerHTML;
    for (let i = 0; i < s.length; i++) h = (h * 31 + s.charCodeAt(i)) | 0;
    return h + ':' + s.length;
}"""


async def errors_in(scope) -> list[str]:
    """Text of every error (and stderr) output under ``scope``: JupyterLab renders both as stderr."""
    return [text[:1500] for text in await scope.locator(STDERR).all_inner_texts()]


async def menu(page, top: str, item: str) -> None:
    await page.click(f'.lm-MenuBar-itemLabel:text-is("{top}")')
    await page.click(f'.lm-Menu-itemLabel:text-is("{item}")')


async def operate(root, page) -> str:
    """Change one control of the widget (a slider, checkbox, choice, in that order of preference), then
    press its button if it has one, and wait until its output has changed and the kernel is idle again.
    Returns what was done, for the failure message."""
    # What changes: an interact's output area (its controls change as they are operated), else the widget.
    output = root.locator(".widget-output")
    target = output.first if await output.count() else root
    button = root.locator("button.widget-button:not([disabled])")
    before = None if await button.count() else await target.evaluate(DIGEST)  # no button: the control runs
    plots = await target.locator("img").count()
    done = []
    handle = root.locator(".widget-slider .noUi-handle")
    boxes = root.locator(".widget-checkbox input[type=checkbox]")
    toggles = root.locator(".widget-toggle-button:not(.mod-active)")
    dropdowns = root.locator(".widget-dropdown select")
    texts = root.locator(".widget-text input")
    if await handle.count():
        await handle.first.focus()
        # One step up; a slider with continuous_update=False sends it now.
        await handle.first.press("ArrowRight")
        done.append("moved a slider one step")
    elif await boxes.count():
        await boxes.first.click()
        done.append("ticked a checkbox")
    elif await toggles.count():
        await toggles.first.click()
        done.append("picked a choice")
    elif await dropdowns.count():
        options = await dropdowns.first.locator("option").all_inner_texts()
        await dropdowns.first.select_option(index=min(1, len(options) - 1))
        done.append("picked another option")
    elif await texts.count():
        await texts.first.fill("task_routes")
        done.append("typed an answer")
    await root.evaluate(WATCH_PROGRESS)
    began = time.monotonic()
    pressed, pressed_button = None, None
    if await button.count():
        before = await target.evaluate(DIGEST)
        pressed, pressed_button = await button.first.inner_text(), await button.first.element_handle()
        await pressed_button.click()
        done.append(f"pressed {pressed!r}")
    did = ", ".join(done) or "found nothing to operate"
    try:  # the output comes from the kernel: once it changed, the kernel's "busy" has reached the page
        await page.wait_for_function(
            f"([el, before]) => ({DIGEST})(el) !== before",
            arg=[await target.element_handle(), before],
            timeout=WIDGET_SECONDS * 1000,
            polling=250,
        )
        if pressed == "Run":  # explore(): the button is disabled while the run lasts
            await page.wait_for_function(
                "(b) => !b.disabled", arg=pressed_button, timeout=WIDGET_SECONDS * 1000
            )
        await page.wait_for_function(KERNEL_IDLE, timeout=WIDGET_SECONDS * 1000, polling=250)
    except Exception as exc:
        raise AssertionError(f"{did}: the widget's output did not change within {WIDGET_SECONDS} s") from exc
    took = time.monotonic() - began
    if took > SLOW_RUN and pressed == "Run":  # an explore() widget
        assert await page.evaluate("window.__sawProgress"), (
            f"{did}: a {took:.0f} s run showed no progress line"
        )
    now = await target.locator("img").count()
    assert not plots or now <= plots, (
        f"{did}: {now} plots after the re-run, {plots} before: it added, not replaced"
    )
    return did


def widget_roots(page):
    """The outermost widget of each widget output (an interact, a quiz)."""
    return page.locator(".jp-OutputArea-output > .jupyter-widgets")


# ---- what the kernel leaves ----------------------------------------------------------------------


def started_by(pid: int) -> dict[int, str]:
    """Live processes the kit spawned from ``pid`` (``CELERYLAB_OWNER``, inherited by their children), each
    with the namespace it works in (from its worker hostname, ``name@namespace``), or "". Another kernel's
    processes carry that kernel's pid: notebooks running side by side are never counted here."""
    found = {}
    for environ in Path("/proc").glob("[0-9]*/environ"):
        try:
            env = dict(v.split(b"=", 1) for v in environ.read_bytes().split(b"\0") if b"=" in v)
            argv = (environ.parent / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if env.get(processes.OWNER.encode()) != str(pid).encode() or is_gone(int(environ.parent.name)):
            continue
        hostname = env.get(runtime.HOSTNAME_ENV.encode(), b"").decode()
        if b"-n" in argv and argv.index(b"-n") + 1 < len(argv):
            hostname = argv[argv.index(b"-n") + 1].decode()
        found[int(environ.parent.name)] = hostname.partition("@")[2]
    return found


def namespace_keys(namespace: str) -> list[bytes]:
    client = redis.Redis.from_url(LOCAL_REDIS)
    try:
        return list(client.scan_iter(match=f"{namespace}:*", count=1000))
    except redis.ConnectionError:  # no local Redis: the notebook used an embedded server, gone with it
        return []
    finally:
        client.close()


async def wait_gone(pids, seconds: float) -> list[int]:
    deadline = time.monotonic() + seconds
    while (left := [p for p in pids if not is_gone(p)]) and time.monotonic() < deadline:
        await asyncio.sleep(0.1)
    return left


async def shot(page, path: Path, element=None) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    if element is not None:
        await element.scroll_into_view_if_needed()
        # Every plot decoded and painted: a screenshot straight after an update caught half an image.
        await element.evaluate(PAINTED)
    await page.screenshot(path=str(path))


# ---- one notebook ----------------------------------------------------------------------------------


async def in_the_browser(lab: Lab, chromium, path: Path) -> None:
    """Everything the test proves for one notebook; an assertion or a wait that ran out says what failed,
    with the page's screenshot at that moment (``<notebook>-failed.png``)."""
    # A browser context of its own: its own storage, only this notebook open (a workspace of its own too:
    # a shared one reopens the others).
    context = await chromium.new_context(viewport={"width": 1400, "height": 1000})
    page = await context.new_page()
    try:
        await page.goto(f"{lab.url}/lab/workspaces/{path.stem}/tree/notebooks/{path.name}?token={lab.token}")
        kernel = await lab.wait_kernel(path.name, 120)
        await page.wait_for_function(KERNEL_IDLE, timeout=120_000)

        await menu(page, "Edit", "Clear Outputs of All Cells")  # the stored prompts' numbers go: [ ]
        await page.wait_for_function(NONE_RAN, timeout=10_000)
        await menu(page, "Run", "Run All Cells")
        await page.wait_for_function(ALL_RAN, timeout=RUN_ALL_SECONDS * 1000, polling=500)
        errors = await errors_in(page)
        first = widget_roots(page).first if await widget_roots(page).count() else None
        await shot(page, ARTIFACTS / f"{path.stem}-run-all.png", first)
        assert not errors, f"{path.name}: error output after Run All:\n" + "\n---\n".join(errors)
        prompts = await page.evaluate(f"() => {PROMPTS}")
        unrun = [n for n, p in enumerate(prompts, 1) if not any(c.isdigit() for c in p)]
        assert not unrun, f"{path.name}: Run All stopped; code cells {unrun} of {len(prompts)} never ran"

        roots = widget_roots(page)
        for n in range(await roots.count()):
            root = roots.nth(n)
            await root.scroll_into_view_if_needed()
            did = await operate(root, page)
            await shot(page, ARTIFACTS / f"{path.stem}-widget-{n + 1}.png", root)
            await root.screenshot(path=str(ARTIFACTS / f"{path.stem}-widget-{n + 1}-alone.png"))
            errors = await errors_in(root)
            assert not errors, f"{path.name}, widget {n + 1} ({did}): error output:\n" + "\n".join(errors)

        spawned = await asyncio.to_thread(started_by, kernel)
        namespaces = {ns for ns in spawned.values() if ns}
        if "explore(" in path.read_text():  # its widget ran after the closing cell: workers are up again
            assert namespaces, (
                f"{path.name}: no worker of the kernel was found before the shutdown: nothing would be proven"
            )
        await menu(page, "Kernel", "Shut Down Kernel")
        assert not await wait_gone([kernel], 60), (
            f"{path.name}: the kernel did not exit after Shut Down Kernel"
        )
        left = await wait_gone(spawned, 10)
        assert not left, f"{path.name}: processes outlived the kernel: {left}"
        assert not await asyncio.to_thread(started_by, kernel), (
            f"{path.name}: processes the kernel started outlived it"
        )
        scratch = [p.name for p in lab.temp_dir(path).iterdir() if p.name.startswith("celerylab-")]
        assert not scratch, f"{path.name}: scratch folders outlived the kernel: {scratch}"
        keys = {ns: await asyncio.to_thread(namespace_keys, ns) for ns in namespaces}
        assert not any(keys.values()), f"{path.name}: namespace keys outlived the kernel: {keys}"
    except Exception as exc:
        failed = ARTIFACTS / f"{path.stem}-failed.png"
        with contextlib.suppress(Exception):  # the verdict is the failure above, not the screenshot's
            await shot(page, failed)
            exc.add_note(f"screenshot: {failed}")
        raise
    finally:
        with contextlib.suppress(Exception):
            await context.close()


# ---- the test ------------------------------------------------------------------------------------


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_notebook_in_the_browser(path: Path, notebooks: SideBySide):
    notebooks.verdict(path)  # raises what failed in this notebook's run, where it failed
