"""One run at a time per output folder: an advisory lock file (`.medseg.lock`) held for the whole run.

The lock is an `fcntl.flock` on an open file, so the kernel releases it when the process ends in any way
(normal exit, exception, `kill -9`); a stale lock file left behind is simply locked again by the next run.
The file holds who took the lock (pid, host, user, time, command) so a second run can say who holds it.
"""

from __future__ import annotations

import getpass
import json
import os
import platform
import sys
from datetime import datetime, timezone
from pathlib import Path
from types import TracebackType

from medseg.errors import InputError

__all__ = ["LOCK_FILE", "OutputLock"]

LOCK_FILE = ".medseg.lock"


def _holder_text(path: Path) -> str:
    try:
        holder = json.loads(path.read_text(encoding="utf-8"))
        return (f"pid {holder.get('pid')} on {holder.get('host')} (user {holder.get('user')}), "
                f"started {holder.get('started')}")
    except (OSError, ValueError, AttributeError):
        return "another process"


class OutputLock:
    """Exclusive, non-blocking lock on an output folder; `InputError` at once when another run holds it."""

    def __init__(self, folder: str | os.PathLike[str]) -> None:
        self.folder = Path(folder)
        self.path = self.folder / LOCK_FILE
        self._handle = None

    def acquire(self) -> OutputLock:
        import fcntl

        self.folder.mkdir(parents=True, exist_ok=True)
        if self.path.is_symlink():
            raise InputError(f"{LOCK_FILE} is a symbolic link; refusing to use it as a lock", self.folder)
        handle = open(self.path, "a+", encoding="utf-8")   # noqa: SIM115 - held open for the lock's lifetime
        try:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            handle.close()
            raise InputError(f"output folder is in use by another medseg run: {_holder_text(self.path)}; wait for "
                             f"it to finish or choose another output folder", self.folder) from None
        try:
            user = getpass.getuser()
        except (KeyError, OSError):
            user = str(os.getuid())
        handle.seek(0)
        handle.truncate()
        json.dump({"pid": os.getpid(), "host": platform.node(), "user": user,
                   "started": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                   "command": " ".join(sys.argv[:6])[:300]}, handle)
        handle.flush()
        self._handle = handle
        return self

    def release(self) -> None:
        if self._handle is not None:
            import fcntl

            fcntl.flock(self._handle.fileno(), fcntl.LOCK_UN)
            self._handle.close()
            self._handle = None

    def __enter__(self) -> OutputLock:
        return self.acquire()

    def __exit__(self, kind: type[BaseException] | None, value: BaseException | None,
                 traceback: TracebackType | None) -> None:
        self.release()
