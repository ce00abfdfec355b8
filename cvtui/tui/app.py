"""The cvtui dashboard: four screens over the catalog, commands through cvtui.actions.

The app hosts the engine in its event loop when given one; either way it only reads the
catalog (a watcher thread, only when PRAGMA data_version moved) and writes through the same
functions as the CLI.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import getpass
import logging
import threading
import time
from collections.abc import Callable, Iterable
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from textual import work
from textual.app import App
from textual.binding import Binding, BindingType
from textual.worker import get_current_worker

from cvtui.catalog import Catalog
from cvtui.engine.lock import lock_holder
from cvtui.engine.tasks import log_failure
from cvtui.errors import CvtuiError
from cvtui.inventory import Inventory
from cvtui.states import ACTIVE_STATES
from cvtui.tui.commands import DashboardCommands
from cvtui.tui.forwards import RunForwards
from cvtui.tui.messages import CatalogNotices, CatalogUpdated, WorkerResult
from cvtui.tui.model import CatalogReader, CatalogView, Clock, Notice
from cvtui.tui.screens.base import DashboardScreen, PaletteCommand
from cvtui.tui.screens.modes import MODE_SCREENS, import_screens
from cvtui.tui.widgets.navbar import SCREENS

if TYPE_CHECKING:
    from cvtui.engine.engine import Engine

log = logging.getLogger("cvtui.tui")

CLOCK_REFRESH_S = 2.0  # re-read without a commit too: host staleness comes from the clock
FIRST_READ_WAIT_S = 0.5  # how long the first frame waits for the first read, at most
LIGHT_DARK = ("textual-dark", "textual-light")


KEEP_ENGINE_S = 60.0  # a dashboard beside an engine pings it this often


class DashboardApp(App[int]):
    """Hosts, Queue, Runs and Stats as modes (1-4, tab); each keeps its own stack of details."""

    CSS_PATH = "app.tcss"
    MODES: ClassVar[dict[str, Any]] = dict(MODE_SCREENS)
    COMMANDS = App.COMMANDS | {DashboardCommands}
    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("1", "show_screen('hosts')", "Hosts", show=False),
        Binding("2", "show_screen('queue')", "Queue", show=False),
        Binding("3", "show_screen('runs')", "Runs", show=False),
        Binding("4", "show_screen('stats')", "Stats", show=False),
        Binding("tab", "next_screen(1)", "Next screen", show=False, priority=True),
        Binding("shift+tab", "next_screen(-1)", "Previous screen", show=False, priority=True),
        Binding("question_mark", "help", "Help"),
        Binding("n", "submit", "Submit", show=False),
        Binding("ctrl+t", "toggle_theme", "Light/dark", show=False),
        Binding("q", "quit", "Quit"),
        Binding("ctrl+c", "quit", "Quit", show=False, priority=True),
    ]

    def __init__(
        self,
        inventory: Inventory,
        catalog: Catalog,
        *,
        engine: Engine | None = None,
        home: Path | None = None,
        title: str = "cvtui",
        duration_s: float | None = None,
        refresh_s: float = 1.0,
        poll_s: float = 0.1,
        clock: Clock = time.time,
        first_screen: str = "hosts",
    ) -> None:
        super().__init__()
        self.inventory = inventory
        self.catalog = catalog
        self.engine = engine
        self.home = home or catalog.path.parent
        self.title = title
        self.duration_s = duration_s
        self.refresh_s = refresh_s  # at most one catalog read per this many seconds
        self.poll_s = poll_s  # how often the watcher looks at data_version
        self.clock = clock
        self.first_screen = first_screen
        policy = inventory.policy
        self.reader = CatalogReader(
            catalog.path,
            clock=clock,
            stale_after_s=policy.stale_after_s,
            disconnected_after_s=policy.disconnected_after_s,
        )
        self.view: CatalogView | None = None
        self.marked: list[str] = []  # run ids marked on the Runs screen for comparison
        self.forwards = RunForwards(inventory, self.home)  # ports forwarded (run detail)
        self.engine_note = self.describe_engine()
        self.user = getpass.getuser()
        self._stop = asyncio.Event()
        self._engine_task: asyncio.Task[None] | None = None
        self._wake = threading.Event()
        self._force_read = True
        self._quitting = False
        self._instant_switch = False
        # The first read overlaps Textual's start-up, so the first frame can show data.
        self._first_read: tuple[CatalogView, list[Notice]] | None = None
        self._prefetch = threading.Thread(target=self._read_first, daemon=True)
        self._prefetch.start()
        self._screens_import: threading.Thread | None = None

    def _read_first(self) -> None:
        with contextlib.suppress(Exception):  # the watcher reads again and reports errors
            self._first_read = self.reader.read()

    # -- lifecycle ----------------------------------------------------------------------
    async def on_mount(self) -> None:
        if self.engine is not None:
            self._engine_task = asyncio.create_task(self.engine.run(self._stop), name="engine")
            self._engine_task.add_done_callback(self._engine_ended)
        # Textual drops every frame drawn before its start-up is over (on_mount included):
        # the first screen composes and draws after it, once.
        self.call_later(self._show_first_screen)
        self.watch_catalog()
        if self.duration_s:
            self.set_timer(self.duration_s, self.action_quit)
        if self.engine is None and self.home is not None:
            # An engine started in the background by `cvtui run` leaves once nobody asks
            # anything of it: while this dashboard shows its lab, it asks.
            self.set_interval(KEEP_ENGINE_S, self.keep_engine)

    @work(thread=True, exclusive=True, group="keep-engine")
    def keep_engine(self) -> None:
        from cvtui.engine.client import EngineClient

        if self.home is not None:
            EngineClient.find(self.home)

    def _show_first_screen(self) -> None:
        # The first read started with the app and is (nearly) done by now: with it the first
        # frame shows the catalog, instead of an empty table drawn and then drawn again.
        self._prefetch.join(FIRST_READ_WAIT_S)
        if self._first_read is not None and self.view is None:
            self.view = self._first_read[0]
        self._instant_switch = True  # nothing on screen yet to hide the switch from
        try:
            self.switch_mode(self.first_screen)
        finally:
            self._instant_switch = False
        self.call_after_refresh(self._after_first_frame)

    def _after_first_frame(self) -> None:
        # What start-up allocated lives as long as the app: keep it out of the collector's
        # full passes, which otherwise stall the UI for tens of milliseconds.
        gc.freeze()
        self._screens_import = threading.Thread(
            target=self._import_screens, name="import-screens", daemon=True
        )
        self._screens_import.start()

    @staticmethod
    def _import_screens() -> None:
        try:
            import_screens()
        except Exception:  # the first switch to that screen imports it again and says why
            log.exception("importing the screens ahead of use failed")

    def _engine_ended(self, task: asyncio.Task[None]) -> None:
        """Say so when the in-process engine stopped by failing (it stops on quit otherwise)."""
        if task.cancelled() or task.exception() is None:
            return
        log_failure(task, log)
        self.engine_note = "engine failed"
        self.notify(f"the engine stopped: {task.exception()!r}", severity="error", timeout=10)

    def describe_engine(self) -> str:
        """Who runs the engine, for the nav bar: this process, a daemon, or nobody."""
        if self.engine is not None:
            return "engine here"
        pid = lock_holder(self.home)
        if pid is None:
            return "no engine"
        return f"engine pid {pid}" if pid > 0 else "engine elsewhere"

    @work(thread=True, exclusive=True, group="catalog-watch")
    def watch_catalog(self) -> None:
        """Read the catalog when another connection committed, at most every refresh_s."""
        worker = get_current_worker()
        last_read = last_note = -1e18
        self._prefetch.join()
        if self._first_read is not None:
            last_read = time.monotonic()
            self._force_read = False
            view, notices = self._first_read
            if self.view is not view:  # on_mount did not get to show it
                self.post_message(CatalogUpdated(view))
            if notices:
                self.post_message(CatalogNotices(notices))
        while not worker.is_cancelled:
            self._wake.wait(self.poll_s)
            self._wake.clear()
            if worker.is_cancelled or self._quitting:
                return
            now = time.monotonic()
            forced, self._force_read = self._force_read, False
            try:
                if not forced and (
                    now - last_read < self.refresh_s
                    or (now - last_read < CLOCK_REFRESH_S and not self.reader.changed())
                ):
                    continue
                last_read = now
                view, notices = self.reader.read()
                if self.engine is None and now - last_note >= CLOCK_REFRESH_S:
                    last_note = now
                    self.engine_note = self.describe_engine()
            except Exception as exc:  # a locked or broken catalog must not end the dashboard
                self.post_message(
                    WorkerResult(
                        partial(
                            self.notify,
                            f"reading the catalog failed: {exc}",
                            severity="error",
                            timeout=5,
                        )
                    )
                )
                continue
            self.post_message(CatalogUpdated(view))
            if notices:
                self.post_message(CatalogNotices(notices))

    def request_read(self) -> None:
        """Read the catalog now (after our own write, which data_version does not show)."""
        self._force_read = True
        self._wake.set()

    def on_catalog_updated(self, message: CatalogUpdated) -> None:
        self.view = message.view
        self.forwards.stop_ended(lambda run_id: (message.view.run(run_id) or {}).get("state"))
        if not self.screen_stack:
            return  # shutting down
        screen = self.screen
        if isinstance(screen, DashboardScreen):
            screen.show_view(message.view)

    def on_worker_result(self, message: WorkerResult) -> None:
        message.apply()

    def on_catalog_notices(self, message: CatalogNotices) -> None:
        ring = False
        for notice in message.notices:
            self.notify(notice.message, title=notice.title, severity=notice.severity, timeout=6)  # type: ignore[arg-type]
            ring |= notice.bell
        if ring:
            self.bell()

    async def action_quit(self) -> None:
        if self._quitting:
            return
        self._quitting = True
        self.forwards.close_all()
        self.workers.cancel_group(self, "catalog-watch")
        self._wake.set()
        self._stop.set()
        if self._engine_task is not None:
            # A failure was reported when it happened (_engine_ended).
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._engine_task
        self.exit(0)

    def on_unmount(self) -> None:
        self._quitting = True
        self.forwards.close_all()
        self._wake.set()
        with contextlib.suppress(Exception):
            self.reader.close()

    # -- navigation ---------------------------------------------------------------------
    async def action_show_screen(self, name: str) -> None:
        if not isinstance(self.screen, DashboardScreen):
            return  # a dialog is open: it is answered first
        if self.current_mode != name:
            await self.show_mode(name)

    async def action_next_screen(self, step: int) -> None:
        if not isinstance(self.screen, DashboardScreen):
            # In a dialog tab moves between its fields as usual.
            if step > 0:
                self.screen.focus_next()
            else:
                self.screen.focus_previous()
            return
        names = [name for name, _ in SCREENS]
        current = names.index(self.current_mode) if self.current_mode in names else 0
        await self.show_mode(names[(current + step) % len(names)])

    async def show_mode(self, name: str) -> None:
        """Switch to a screen, shown at the next frame (a new one once it is composed)."""
        self._instant_switch = True
        try:
            # Textual's switch_mode holds every frame back 50 ms so a new screen composes
            # unseen. Ours are composed once and kept: only a new one needs hiding, and
            # only while it composes, which switch_mode's result waits for.
            with self.batch_update():
                await self.switch_mode(name)
        finally:
            self._instant_switch = False
        self.screen.refresh()  # a frame made during the batch was dropped

    def delay_update(self, delay: float = 0.05) -> None:
        if not self._instant_switch:
            super().delay_update(delay)

    def action_help(self) -> None:
        from cvtui.tui.screens.help import HelpScreen

        screen = self.screen
        title = type(screen).__name__.removesuffix("Screen")
        self.push_screen(HelpScreen(title, screen.active_bindings))

    def action_toggle_theme(self) -> None:
        self.theme = LIGHT_DARK[1] if self.theme == LIGHT_DARK[0] else LIGHT_DARK[0]

    def open_run(self, run_id: str) -> None:
        from cvtui.tui.screens.run_detail import RunDetailScreen

        self.push_screen(RunDetailScreen(run_id))

    # -- commands: written through cvtui.actions in a worker thread ------------------------
    def perform(self, what: str, act: Callable[[Catalog], str | None]) -> None:
        """Run ``act`` on the catalog off the UI thread; toast its result or its error."""
        self._perform(what, act)

    @work(thread=True, group="actions")
    def _perform(self, what: str, act: Callable[[Catalog], str | None]) -> None:
        try:
            with self.reader.use() as catalog:
                done = act(catalog)
        except (CvtuiError, ValueError) as exc:
            failed = partial(self.notify, str(exc), title=f"{what} failed", severity="error")
            self.post_message(WorkerResult(failed))
        else:
            if done:
                self.post_message(WorkerResult(partial(self.notify, done, title=what)))
        self.request_read()

    def shift_priority(self, run_id: str, steps: int) -> None:
        from cvtui.actions import shift_priority

        def act(catalog: Catalog) -> str:
            return f"now {shift_priority(catalog, run_id, steps)}"

        self.perform("Priority", act)

    def pick_priority(self, run: dict[str, Any]) -> None:
        from cvtui.actions import set_priority
        from cvtui.tui.screens.priority import PriorityScreen

        def chosen(priority: str | None) -> None:
            if priority is None or priority == run["priority"]:
                return

            def act(catalog: Catalog) -> str:
                set_priority(catalog, run["id"], priority)
                return f"{run['name']}: {priority}"

            self.perform("Priority", act)

        self.push_screen(PriorityScreen(run["name"], run["priority"]), chosen)

    def confirm_cancel(self, runs: Iterable[dict[str, Any]]) -> None:
        from cvtui.actions import cancel_runs
        from cvtui.tui.screens.confirm import ConfirmScreen

        chosen = [r for r in runs if r["state"] in ACTIVE_STATES]
        if not chosen:
            self.notify("only queued or running runs can be cancelled", severity="warning")
            return
        names = ", ".join(r["name"] for r in chosen[:3]) + (" …" if len(chosen) > 3 else "")
        placed = any(r["state"] != "queued" for r in chosen)
        detail = "SIGTERM to its processes, SIGKILL 10 s later" if placed else "it leaves the queue"

        def answered(yes: bool | None) -> None:
            if not yes:
                return

            def act(catalog: Catalog) -> str:
                outcomes = cancel_runs(catalog, chosen, by=self.user)
                return "; ".join(f"{o.name}: {o.outcome}" for o in outcomes)

            self.perform("Cancel", act)

        self.push_screen(ConfirmScreen(f"Cancel {names}?", detail), answered)

    def action_submit(self) -> None:
        from cvtui.tui.screens.submit import SubmitScreen

        if not isinstance(self.screen, DashboardScreen):
            return  # from inside a dialog, n is that dialog's

        def submitted(ids: list[str] | None) -> None:
            if ids:
                self.notify(f"queued {len(ids)} run{'s' if len(ids) != 1 else ''}", title="Submit")
                self.request_read()

        self.push_screen(SubmitScreen(), submitted)

    def global_commands(self) -> list[PaletteCommand]:
        entries = [
            PaletteCommand(
                f"Go to {label}", f"screen {n}", partial(self.run_action, f"show_screen('{name}')")
            )
            for n, (name, label) in enumerate(SCREENS, start=1)
        ]
        return [
            *entries,
            PaletteCommand("Submit a run config…", "dry run first, then queue", self.action_submit),
            PaletteCommand("Help: keys", "every key of this screen", self.action_help),
            PaletteCommand("Toggle light/dark theme", "ctrl+t", self.action_toggle_theme),
            PaletteCommand("Reload the catalog now", "re-read everything", self.request_read),
        ]
