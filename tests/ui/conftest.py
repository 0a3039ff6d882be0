"""Browser tests: the admin UI of a real stack, driven in headless Chromium.

Tests are plain sync functions using Playwright's sync API (`page.goto`, `expect`).
Playwright runs on a thread of its own, and every test that uses the browser runs
there, setup and teardown included (`pytest_runtest_protocol` below), because:

- between two sync calls Playwright marks its event loop as the thread's running loop
  (`asyncio._set_running_loop` in playwright/_impl/_greenlets.py). On the main
  thread that stays so for as long as the session-wide browser lives, and every
  async test after the first UI test then fails ("Runner.run() cannot be called
  from a running event loop");
- its objects may only be used on the thread that started it (greenlets).

So UI tests and the fixtures they use must be sync. Like the other whole-stack tests
they are marked `e2e` (`pytestmark = pytest.mark.e2e`).
"""

from __future__ import annotations

import concurrent.futures
import inspect
import queue
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest
from _pytest.runner import runtestprotocol  # what pytest-xdist and -rerunfailures call too
from playwright.sync_api import BrowserContext, ConsoleMessage, Page, expect, sync_playwright

from tests.conftest import REPO_ROOT, TEST_DATA_DIR
from tests.fixtures.local_hub import LocalHub
from tests.fixtures.stack import Stack, launch_stack

CHROMIUM = Path("/usr/bin/chromium")
# Twice Playwright's default: a busy 2-core CI machine answers slower than this one.
expect.set_options(timeout=10_000)
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
VIEWPORT = {"width": 1440, "height": 900}

T = TypeVar("T")


class BrowserThread:
    """One daemon thread that runs what it is given, in order: Playwright's home."""

    def __init__(self) -> None:
        self._jobs: queue.SimpleQueue[tuple[concurrent.futures.Future, Callable[[], Any]]] = (
            queue.SimpleQueue()
        )
        # A daemon: a test hung in the browser must not keep the process alive.
        self._thread = threading.Thread(target=self._serve, name="playwright", daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while True:
            future, job = self._jobs.get()
            if not future.set_running_or_notify_cancel():
                continue
            try:
                future.set_result(job())
            except BaseException as exc:  # pytest's outcomes (skip, fail, exit) included
                future.set_exception(exc)

    def run(self, job: Callable[[], T]) -> T:
        """`job()` on this thread; called from this thread, it simply runs."""
        if threading.current_thread() is self._thread:
            return job()
        future: concurrent.futures.Future[T] = concurrent.futures.Future()
        self._jobs.put((future, job))
        return future.result()


_BROWSER_THREAD = pytest.StashKey[BrowserThread]()


def _browser_thread(config: pytest.Config) -> BrowserThread:
    if _BROWSER_THREAD not in config.stash:
        config.stash[_BROWSER_THREAD] = BrowserThread()
    return config.stash[_BROWSER_THREAD]


def _uses_browser(item: pytest.Item) -> bool:
    return "browser_context" in getattr(item, "fixturenames", ())


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """pytest-timeout's default method (SIGALRM) works on the main thread only: browser
    tests keep their timeout but use its thread method (a hung test then ends the run,
    with every thread's stack printed)."""
    for item in items:
        if _uses_browser(item):
            marker = item.get_closest_marker("timeout")
            timeout = None
            if marker is not None:
                timeout = marker.kwargs.get("timeout", marker.args[0] if marker.args else None)
            item.add_marker(pytest.mark.timeout(timeout, method="thread"), append=False)


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_protocol(item: pytest.Item, nextitem: pytest.Item | None) -> bool | None:
    """Runs a test that uses the browser, with its fixtures, on the browser thread."""
    if not _uses_browser(item):
        return None  # not a browser test: pytest runs it as usual

    def protocol() -> None:
        item.ihook.pytest_runtest_logstart(nodeid=item.nodeid, location=item.location)
        runtestprotocol(item, nextitem=nextitem)
        item.ihook.pytest_runtest_logfinish(nodeid=item.nodeid, location=item.location)

    _browser_thread(item.config).run(protocol)
    return True


@pytest.fixture(scope="session")
def ui_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """The whole stack for the UI tests, with a data directory, database, Hub and
    training root of its own. Only the built-in model's converted copy is shared:
    `models/converted` links to the test cache's (the first stack of a fresh clone
    converts into it), so downloads a test makes stay in this session's folder."""
    shared_converted = TEST_DATA_DIR / "models" / "converted"
    shared_converted.mkdir(parents=True, exist_ok=True)
    data_dir = tmp_path_factory.mktemp("ui-data")
    (data_dir / "models").mkdir()
    (data_dir / "models" / "converted").symlink_to(shared_converted, target_is_directory=True)
    (data_dir / "saes").mkdir()
    with (
        LocalHub() as hub,
        launch_stack(
            data_dir,
            tmp_path_factory.mktemp("ui-db") / "millm.db",
            tmp_path_factory.mktemp("ui-logs"),
            hub,
            training_root=tmp_path_factory.mktemp("ui-training"),
        ) as stack,
    ):
        yield stack


@pytest.fixture(scope="session")
def browser_context(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[BrowserContext]:
    """Headless Debian Chromium (never a Playwright-downloaded browser) with a fresh
    profile, shared by the session's tests."""
    if not CHROMIUM.exists():
        pytest.fail(
            f"{CHROMIUM} is missing: run `make bootstrap`, which installs Debian's chromium "
            "package for the browser tests.",
            pytrace=False,
        )
    thread = _browser_thread(request.config)
    profile = tmp_path_factory.mktemp("chromium-profile")
    playwright = thread.run(lambda: sync_playwright().start())
    try:
        context = thread.run(
            lambda: playwright.chromium.launch_persistent_context(
                user_data_dir=profile,
                executable_path=CHROMIUM,
                headless=True,
                args=CHROMIUM_ARGS,
                viewport=VIEWPORT,
            )
        )
    except BaseException:
        thread.run(playwright.stop)
        raise
    yield context
    # Session teardown may run on the main thread: hop back to Playwright's.
    thread.run(context.close)
    thread.run(playwright.stop)


@pytest.fixture
def page(request: pytest.FixtureRequest, browser_context: BrowserContext) -> Iterator[Page]:
    """A new tab. `page.console_errors` collects console errors and uncaught exceptions
    (as "console: ..." and "pageerror: ..."), so a test can assert there were none."""
    if inspect.iscoroutinefunction(request.function):
        pytest.fail("browser tests must be sync functions (see tests/ui/conftest.py)")
    thread = _browser_thread(request.config)

    def open_tab() -> Page:
        tab = browser_context.new_page()
        errors: list[str] = []

        def on_console(message: ConsoleMessage) -> None:
            if message.type == "error":
                errors.append(f"console: {message.text} ({message.location.get('url', '')})")

        tab.on("console", on_console)
        tab.on("pageerror", lambda error: errors.append(f"pageerror: {error.message}"))
        tab.console_errors = errors  # type: ignore[attr-defined]
        return tab

    tab = thread.run(open_tab)
    yield tab
    thread.run(tab.close)


@pytest.fixture(scope="session")
def artifacts_dir() -> Path:
    """Where UI tests leave screenshots and traces (git-ignored)."""
    path = REPO_ROOT / "test-artifacts" / "ui"
    path.mkdir(parents=True, exist_ok=True)
    return path
