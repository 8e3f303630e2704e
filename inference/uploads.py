"""Each server's own upload folder under a shared root, and the sweep that removes dead servers' folders.

Several copies of the app may share one root (the default `<tmp>/melanoma-triage`, or `$GRADIO_TEMP_DIR`):
two on one machine, or a restart after a crash. Gradio's `delete_cache` deletes only the files its own process
wrote, so the uploads of a server that was killed would stay, and a start-up purge of "old files" in a shared
folder deletes the files a live server still serves (its example copies). Instead each server process claims a
folder of its own, `instance-XXXX/`, and holds an exclusive `flock` on `instance-XXXX.lock` beside it for as long
as it lives. The kernel releases that lock when the process ends, however it ends (`kill -9` too), so any other
server can tell a dead instance from a live one without guessing from ages or pids: `sweep` deletes the folders
whose lock it can take, and never touches a live one's. Linux and macOS (fcntl); standard library only.
"""

from __future__ import annotations

import fcntl
import os
import shutil
import tempfile
import threading
import time
from pathlib import Path

PREFIX = "instance-"
LOCK = ".lock"
_CLAIMED: dict[Path, "InstanceFolder"] = {}  # one folder per process and root: later calls get the same one


class InstanceFolder:
    """A folder under `root` that belongs to this process while it lives (see the module docstring)."""

    def __init__(self, root: Path, path: Path, lock_fd: int) -> None:
        self.root, self.path, self._lock_fd = root, path, lock_fd
        self.sweeper: threading.Thread | None = None

    @classmethod
    def claim(cls, root: str | os.PathLike) -> "InstanceFolder":
        """This process's folder under `root`: created and locked on the first call, the same one after."""
        root = Path(root).expanduser().resolve()
        if root in _CLAIMED:
            return _CLAIMED[root]
        mine = next((f for f in _CLAIMED.values() if f.path == root), None)
        if mine is not None:  # $GRADIO_TEMP_DIR already points at this process's folder (a second app built)
            return mine
        root.mkdir(parents=True, exist_ok=True)
        # The lock file is locked before a sweeper can see its name (it is linked under that name only then), and
        # it exists before the folder does: so a folder without its lock file is never a live one.
        fd, claiming = tempfile.mkstemp(prefix=PREFIX, suffix=LOCK + ".new", dir=root)
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # a fresh, unique file: nobody else can hold it
        lock_path = Path(claiming.removesuffix(".new"))
        os.link(claiming, lock_path)  # never replaces an existing name
        os.unlink(claiming)
        path = root / lock_path.name.removesuffix(LOCK)
        path.mkdir()
        _CLAIMED[root] = folder = cls(root, path, fd)
        return folder

    def sweep(self) -> int:
        """Delete the folders of the instances under the same root that have ended (their lock is free); returns
        how many went. Live instances are never touched, nor anything else in the root (a folder whose lock file
        someone else deleted cannot be told from a live one, so it stays)."""
        return sum(_remove_if_dead(lock, self.root / lock.name.removesuffix(LOCK))
                   for lock in sorted(self.root.glob(PREFIX + "*" + LOCK)) if lock.name != self.path.name + LOCK)

    def sweep_every(self, seconds: float) -> threading.Thread:
        """Sweep now and then every `seconds` in a daemon thread (one per folder: later calls only sweep), so a
        server that dies while this one runs has its files deleted within `seconds`, not only when the next
        server starts."""
        self.sweep()
        if self.sweeper is not None:
            return self.sweeper

        def loop() -> None:
            while True:
                time.sleep(seconds)
                try:
                    self.sweep()
                except OSError:  # a full or read-only disk must not end the sweeping
                    continue

        self.sweeper = threading.Thread(target=loop, name="upload-sweep", daemon=True)
        self.sweeper.start()
        return self.sweeper


def _remove_if_dead(lock_path: Path, folder: Path) -> int:
    """Delete `folder` and then `lock_path` if no process holds the lock; 1 if it went, else 0."""
    try:
        fd = os.open(lock_path, os.O_RDWR)
    except OSError:  # another sweeper removed it first
        return 0
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return 0  # alive
        shutil.rmtree(folder, ignore_errors=True)  # the folder first: a lock file without a folder is harmless
        lock_path.unlink(missing_ok=True)
        return 1
    finally:
        os.close(fd)
