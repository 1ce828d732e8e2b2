"""SIGINT and SIGTERM end a command within seconds, saying what was kept for a rerun.

The CLI installs `handle_signal` for both. The first signal raises `Interrupted` (a KeyboardInterrupt, so Ray and
the libraries unwind as they do for Ctrl-C). An exception raised from a signal handler can be swallowed (it may
land in a finalizer or a library's `except Exception`), so a watchdog raises it again every `REPEAT_S` until the
CLI has unwound, and after `GRACE_S` prints the same message and ends the process. A second real signal ends it at
once. Code that leaves resumable progress on disk says so with `keep(...)`; the CLI prints those notes. Exit status:
128 + the signal number (130 for SIGINT, 143 for SIGTERM), as shells do.
"""

from __future__ import annotations

import _thread
import os
import shutil
import signal
import sys
import threading
import time

REPEAT_S = 3.0  # raise the interruption again if the main thread is still running after this long
GRACE_S = 20.0  # then give up unwinding (a Ray call stuck in native code) and end the process
SIGNALS = (signal.SIGINT, signal.SIGTERM)
_DEFAULT_RESUME = "rerun the same command to resume"


class Interrupted(KeyboardInterrupt):
    """Raised in the main thread by SIGINT/SIGTERM."""

    def __init__(self, signum: int):
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


_state: dict = {"signum": None, "command": None, "resume": _DEFAULT_RESUME, "repeat": False, "unwound": None}
_kept: list[str] = []
_scratch: list[str] = []  # private folders removed even when the process has to end without cleanup


def received() -> int | None:
    """The first signal received by this process (None: none yet)."""
    return _state["signum"]


def keep(note: str, resume: str | None = None) -> None:
    """Record something a rerun reuses, e.g. "the trajectory cache in /x"; printed on interrupt.

    Args:
        resume: how to resume, when it is not "rerun the same command" (e.g. eval's --resume).
    """
    if note not in _kept:
        _kept.append(note)
    if resume:
        _state["resume"] = resume


def scratch(path: str) -> None:
    """A private folder to delete even if the process must end without its normal exit (Ray's temp folder)."""
    _scratch.append(path)


def handle_signal(signum, frame) -> None:
    if _state["repeat"]:  # the watchdog re-raising the first signal
        _state["repeat"] = False
        raise Interrupted(_state["signum"])
    if _state["signum"] is not None:
        _end(f"second {signal.Signals(signum).name}: stopping now")
    _state["signum"] = signum
    _state["unwound"] = threading.Event()
    threading.Thread(target=_watchdog, args=(_state["unwound"],), daemon=True).start()
    raise Interrupted(signum)


def _watchdog(unwound: threading.Event) -> None:
    """Re-raise until the CLI has caught the interruption; end the process if it still runs after GRACE_S (the
    exit hooks after the CLI returned, e.g. Ray's shutdown, count too)."""
    deadline = time.monotonic() + GRACE_S
    while time.monotonic() < deadline:
        if unwound.wait(REPEAT_S):
            time.sleep(max(0.0, deadline - time.monotonic()))
            break
        _state["repeat"] = True
        _thread.interrupt_main(_state["signum"])
    _end(f"still unwinding {GRACE_S:g} s after the signal; stopping now")


def _end(note: str) -> None:
    text, status = exit_message()
    print(f"{note}\n{text}", file=sys.stderr, flush=True)
    for path in _scratch:
        shutil.rmtree(path, ignore_errors=True)
    os._exit(status)


def install_handlers(command: str) -> dict:
    """Route SIGINT and SIGTERM to `handle_signal` (main thread only); returns the handlers it replaced."""
    if threading.current_thread() is not threading.main_thread():
        return {}
    previous = {s: signal.getsignal(s) for s in SIGNALS}
    for s in SIGNALS:
        signal.signal(s, handle_signal)
    _state["command"] = command
    return previous


def handlers_installed() -> bool:
    """Whether the CLI's handlers are in charge (libraries must not replace them)."""
    return _state["command"] is not None


def reinstall_handlers() -> None:
    """Put our handlers back after a library replaced them (ray.init installs its own SIGTERM handler)."""
    if _state["command"] is not None and threading.current_thread() is threading.main_thread():
        for s in SIGNALS:
            signal.signal(s, handle_signal)


def unwound() -> None:
    """The CLI caught the interruption: stop the watchdog's re-raising (the exit itself is still bounded)."""
    if _state["unwound"] is not None:
        _state["unwound"].set()
        _state["repeat"] = False


def restore_handlers(previous: dict) -> None:
    """Undo `install_handlers` (the CLI runs in-process in tests and in `jobs/` entry points) and forget the notes."""
    for s, handler in previous.items():
        signal.signal(s, handler if handler is not None else signal.SIG_DFL)
    _state.update(command=None, resume=_DEFAULT_RESUME)
    _kept.clear()


def exit_message(command: str | None = None) -> tuple[str, int]:
    """What an interrupted command prints, and its exit status."""
    command = command or _state["command"] or ""
    signum = _state["signum"] or signal.SIGINT
    name = signal.Signals(signum).name
    if _kept:
        text = f"trce-ray {command}: stopped by {name}; kept {'; '.join(_kept)}; {_state['resume']}"
    else:
        text = f"trce-ray {command}: stopped by {name}; no output was written, rerun the command to start again"
    return text, 128 + signum
