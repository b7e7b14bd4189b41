"""Per-task lock files: two runners, or two workers of one runner, never train the same run.

A lock is created with `O_EXCL`; a lock left by a dead process on this host is taken over.
"""

from __future__ import annotations

import json
import os
import socket
import time
from datetime import datetime, timezone
from pathlib import Path


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def read_lock(path: Path) -> dict | None:
    """The owner record of a lock file, {} if unreadable, None if there is no lock."""
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError):
        return {}


def lock_is_stale(owner: dict | None, path: Path) -> bool:
    """A lock is stale when its process is gone: same host and no such pid. A lock from
    another host is never stale (we cannot see its processes); an unreadable one is stale
    after a minute (a writer that died between creating and filling it)."""
    if owner is None:
        return False
    if not owner:
        try:
            return time.time() - path.stat().st_mtime > 60
        except FileNotFoundError:
            return False
    return owner.get("host") == socket.gethostname() and not _pid_alive(int(owner.get("pid", -1)))


def _create_lock(path: Path, what: str) -> bool:
    try:
        fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
    except FileExistsError:
        return False
    record = {"pid": os.getpid(), "host": socket.gethostname(),
              "time": datetime.now(timezone.utc).isoformat(timespec="seconds"), "task": what}
    with os.fdopen(fd, "w") as fh:
        fh.write(json.dumps(record))
        fh.flush()
        os.fsync(fh.fileno())
    return True


def acquire_lock(path: str | Path, what: str = "") -> bool:
    """Create lock file `path` (O_EXCL), taking over a stale one. True if we now hold it.

    A takeover is itself guarded by an O_EXCL `<lock>.takeover` file, so two runners that
    both find the same stale lock cannot both replace it.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if _create_lock(path, what):
        return True
    owner = read_lock(path)
    if not lock_is_stale(owner, path):
        return False
    guard = path.with_name(path.name + ".takeover")
    if not _create_lock(guard, what):
        if lock_is_stale(read_lock(guard), guard):
            guard.unlink(missing_ok=True)  # a takeover that died half-way; retry next time
        return False
    try:
        if read_lock(path) != owner:  # changed under us: someone else got there first
            return False
        path.unlink(missing_ok=True)
        return _create_lock(path, what)
    finally:
        guard.unlink(missing_ok=True)


def release_lock(path: str | Path) -> None:
    """Remove lock `path` if this process holds it."""
    path = Path(path)
    owner = read_lock(path)
    if owner and owner.get("pid") == os.getpid() and owner.get("host") == socket.gethostname():
        path.unlink(missing_ok=True)
