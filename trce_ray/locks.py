"""One lock per output folder, work folder and cache key, held for a whole command.

A lock is `fcntl.flock` on a sidecar file (`.<name>.lock` beside the folder it guards), so the kernel releases it
when the holding process dies, even by SIGKILL. The file holds who took it (pid, host, command, time) so a second
run can name the holder in its one-sentence error. Locks are re-entrant within a process: `run_erasure` locks the
output and `run_stage2`, which it calls, locks it again.

flock is advisory and local to one kernel on most network filesystems; on NFSv4 it is forwarded to the server.
"""

from __future__ import annotations

import fcntl
import json
import os
import socket
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from .errors import TRCEError

_HELD: dict[str, list] = {}  # lock file -> [fd, depth, parents it created] for the locks this process holds
_GUARD = threading.Lock()


def lock_path(target: str | Path) -> Path:
    """The sidecar lock file of `target` (a folder or file that may not exist yet)."""
    target = Path(target).expanduser().resolve()
    return target.parent / f".{target.name}.lock"


def _holder(path: Path) -> str:
    try:
        info = json.loads(path.read_text() or "{}")
    except (OSError, ValueError):
        info = {}
    if not info:
        return "another process"
    since = time.strftime("%H:%M:%S", time.localtime(info.get("time", 0)))
    return f"pid {info.get('pid')} on {info.get('host')} (`{info.get('command', '?')}`, since {since})"


def _missing_parents(folder: Path) -> list[Path]:
    """The folders from `folder` up that do not exist yet, deepest first."""
    missing = []
    while not folder.exists() and folder != folder.parent:
        missing.append(folder)
        folder = folder.parent
    return missing


def _open_locked(path: Path, wait: bool, what: str, target: Path) -> int:
    """Open `path` and flock it; retry when the file was replaced between open and lock (a holder removed it)."""
    announced, retries = False, 0
    while True:
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        except FileNotFoundError as err:
            retries += 1  # another process removed the (empty) parent it had made, between our mkdir and open
            if retries < 10:
                continue
            raise TRCEError(f"cannot write {what} {target}: {err.strerror} ({path.parent})") from None
        except OSError as err:
            raise TRCEError(f"cannot write {what} {target}: {err.strerror} ({path.parent})") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            if not wait:
                os.close(fd)
                raise TRCEError(
                    f"{what} {target} is in use by another trce-ray run ({_holder(path)}); wait for it to finish "
                    "or choose another path"
                ) from None
            if not announced:
                print(f"waiting for {_holder(path)}, which holds {what} {target}", file=sys.stderr, flush=True)
                announced = True
            try:
                fcntl.flock(fd, fcntl.LOCK_EX)  # a signal handler that raises ends the wait (PEP 475)
            except BaseException:
                os.close(fd)
                raise
        try:
            same = os.fstat(fd).st_ino == os.stat(path).st_ino
        except FileNotFoundError:
            same = False
        if same:
            return fd
        os.close(fd)  # the previous holder unlinked the file after we opened it: lock the new one


@contextmanager
def hold(target: str | Path, what: str = "output", wait: bool = False) -> Iterator[Path]:
    """Hold the lock of `target` for the block.

    Args:
        what: how the error names the target ("output", "trajectory cache", ...).
        wait: block until the holder is done (announcing it once on stderr) instead of failing at once.

    Raises:
        TRCEError: `wait` is False and another process holds the lock (naming it), or the lock file cannot be made.
    """
    target = Path(target).expanduser().resolve()
    path = lock_path(target)
    key = str(path)
    with _GUARD:
        held = _HELD.get(key)
        if held is not None:
            held[1] += 1
    if held is None:
        made = _missing_parents(path.parent)
        fd = _open_locked(path, wait, what, target)
        info = {"pid": os.getpid(), "host": socket.gethostname(), "command": _command(), "time": time.time()}
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(info).encode(), 0)
        with _GUARD:
            _HELD[key] = [fd, 1, made]
    try:
        yield path
    finally:
        with _GUARD:
            entry = _HELD[key]
            entry[1] -= 1
            last = entry[1] == 0
            if last:
                del _HELD[key]
        if last:
            try:
                path.unlink()  # while still locked, so nobody holds a lock on a file that is gone
            except OSError:
                pass
            os.close(entry[0])
            for folder in entry[2]:  # parents this lock created, if the command left them empty
                try:
                    folder.rmdir()
                except OSError:
                    break


def _command() -> str:
    args = [os.path.basename(sys.argv[0]) if sys.argv else "python", *sys.argv[1:]]
    text = " ".join(args)
    return text if len(text) <= 120 else text[:117] + "..."
