"""Per-task lock files: two runners, or two workers of one runner, never train the same run.

A lock file is a JSON record of its owner: host, pid, the process's start time (so a pid
the kernel gave to another process is told apart), the machine's boot id and pid
namespace (so "same host" means the same running kernel and pid space), the time it was
taken and the owner's heartbeat period. The file's mtime is the heartbeat: the owner
touches it every `heartbeat_s` seconds while it works (`heartbeat`, a thread).

A lock no longer protects anything ("stale") and is taken over when:

- it is not a lock record (empty, garbage, unreadable). Locks are written whole to a
  temporary file and hard-linked into place, so a half-written lock never exists and an
  empty one is always debris;
- its owner ran on this machine and that process is gone: no such pid, or the pid now
  belongs to a process started at another time;
- its owner ran on another machine (a shared filesystem on a cluster: we cannot see its
  processes) and its heartbeat is older than the timeout, `ATTNCOLLAPSE_LOCK_TIMEOUT_S`
  (default 600 s, never less than 3 heartbeat periods). A live owner refreshes it every
  minute, so only a dead or cut-off one's lock expires;
- the executor knows the attempt that took it died (`takeover=<attempt id>`: Ray reports
  the node that ran it dead).

Hand-written: no library offers a lock that is safe on NFS/Lustre, tells a reused pid
apart and expires a remote owner's lock (filelock's locks are per-host, psutil is not a
dependency); /proc is read directly, with `ps` as the fallback off Linux.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
import time
import uuid
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable, Iterator

TIMEOUT_ENV = "ATTNCOLLAPSE_LOCK_TIMEOUT_S"
DEFAULT_TIMEOUT_S = 600.0
"""A remote owner's lock expires after this many seconds without a heartbeat (10 min)."""

GUARD_TIMEOUT_S = 30.0
"""A takeover guard (`<lock>.takeover`) lives milliseconds; one older than this is debris."""


def lock_timeout_s() -> float:
    """`ATTNCOLLAPSE_LOCK_TIMEOUT_S` when set to a positive number, else 600 s."""
    text = os.environ.get(TIMEOUT_ENV, "").strip()
    try:
        value = float(text)
    except ValueError:
        return DEFAULT_TIMEOUT_S
    return value if value > 0 else DEFAULT_TIMEOUT_S


def heartbeat_period_s(timeout_s: float | None = None) -> float:
    """How often an owner touches its lock: a tenth of the timeout, at most a minute."""
    return min(60.0, (timeout_s or lock_timeout_s()) / 10)


# --- who we are ----------------------------------------------------------------------------

def _read(path: str) -> str | None:
    try:
        with open(path) as fh:
            return fh.read().strip()
    except OSError:
        return None


def process_start(pid: int) -> str | None:
    """A token of when process `pid` started, None if it does not exist or cannot be seen.

    Linux: field 22 of /proc/<pid>/stat (clock ticks after boot); elsewhere `ps -o lstart=`.
    """
    stat = _read(f"/proc/{pid}/stat")
    if stat is not None:
        fields = stat.rsplit(")", 1)[-1].split()  # the command name may hold spaces and ")"
        return fields[19] if len(fields) > 19 else None  # field 22 overall; fields[0] is field 3
    if sys.platform.startswith("linux"):
        return None
    try:
        out = subprocess.run(["ps", "-o", "lstart=", "-p", str(pid)], capture_output=True, text=True, timeout=5)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout.strip() or None


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    except (OverflowError, ValueError):
        return False
    return True


def machine() -> dict:
    """This machine as a lock records it: host name, boot id and pid namespace (None where unknown)."""
    try:
        pidns = os.readlink("/proc/self/ns/pid")
    except OSError:
        pidns = None
    return {"host": socket.gethostname(), "boot": _read("/proc/sys/kernel/random/boot_id"), "pidns": pidns}


def _same_machine(owner: dict, here: dict) -> bool:
    """Same host name, and same boot and pid namespace where both sides recorded them: a
    rebooted machine or another container with our name counts as another host."""
    if owner.get("host") != here["host"]:
        return False
    return all(owner.get(k) is None or here[k] is None or owner.get(k) == here[k] for k in ("boot", "pidns"))


# --- reading a lock ------------------------------------------------------------------------

def read_lock(path: str | Path) -> dict | None:
    """The owner record of a lock file, {} if it is not a valid one, None if there is no lock."""
    raw = _raw(Path(path))
    return None if raw is None else _record(raw)


def _raw(path: Path) -> bytes | None:
    try:
        return path.read_bytes()
    except FileNotFoundError:
        return None
    except OSError as exc:  # unreadable (permissions, a directory): not a lock record
        return f"\0unreadable: {exc.strerror or exc}".encode()


def _record(raw: bytes) -> dict:
    """The validated record in `raw`, {} when it is not one."""
    try:
        rec = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        return {}
    ok = (isinstance(rec, dict) and isinstance(rec.get("host"), str) and rec["host"]
          and type(rec.get("pid")) is int and rec["pid"] > 0
          and all(rec.get(k) is None or isinstance(rec[k], str) for k in ("started", "boot", "pidns", "attempt"))
          and (rec.get("heartbeat_s") is None or (isinstance(rec["heartbeat_s"], (int, float))
                                                   and rec["heartbeat_s"] > 0)))
    return rec if ok else {}


def _garbage_why(raw: bytes) -> str:
    if raw.startswith(b"\0unreadable"):
        return raw[1:].decode(errors="replace")
    if not raw.strip():
        return "empty file"
    return "not a lock record"


@dataclass
class LockState:
    """What a lock file says and whether it still protects its task.

    Attributes:
        owner: the record ({} when the file is not a lock record).
        stale: why the lock no longer protects anything; None while its owner holds it.
        heartbeat_age_s: seconds since the owner's last heartbeat (the file's mtime).
        raw: the file's bytes (a takeover replaces the lock only if they are unchanged).
    """

    owner: dict
    stale: str | None
    heartbeat_age_s: float | None
    raw: bytes = field(default=b"", repr=False)

    @property
    def who(self) -> str:
        """"host:pid" of the owner ("?" for a lock that is not a record)."""
        return f"{self.owner['host']}:{self.owner['pid']}" if self.owner else "?"


def inspect_lock(path: str | Path, *, timeout_s: float | None = None,
                 takeover: str | None = None) -> LockState | None:
    """The state of lock `path`, None when there is no lock.

    Args:
        timeout_s: heartbeat timeout for another host's lock (default `lock_timeout_s()`).
        takeover: an attempt id the caller knows to be dead; a lock taken by it is stale
            (unless its process still runs on this machine).
    """
    path = Path(path)
    raw = _raw(path)
    if raw is None:
        return None
    try:
        age = max(0.0, time.time() - path.stat().st_mtime)
    except OSError:
        age = None
    owner = _record(raw)
    if not owner:
        return LockState({}, f"{_garbage_why(raw)}", age, raw)
    here = machine()
    local = _same_machine(owner, here)
    pid, who = owner["pid"], f"{owner['host']}:{owner['pid']}"
    if local:
        started = process_start(pid)
        alive = _pid_alive(pid)
        if not alive:
            return LockState(owner, f"its process {who} is gone", age, raw)
        if owner.get("started") and started and started != owner["started"]:
            return LockState(owner, f"pid {pid} now belongs to another process (started at another time)", age, raw)
        return LockState(owner, None, age, raw)
    if takeover is not None and owner.get("attempt") == takeover:
        return LockState(owner, f"its attempt {takeover} died ({who})", age, raw)
    timeout = max(timeout_s or lock_timeout_s(), 3 * float(owner.get("heartbeat_s") or 0))
    if age is not None and age > timeout:
        return LockState(owner, f"no heartbeat from {who} for {age:.0f} s (timeout {timeout:.0f} s, "
                                f"{TIMEOUT_ENV})", age, raw)
    return LockState(owner, None, age, raw)


def lock_is_stale(path: str | Path, *, timeout_s: float | None = None) -> bool:
    """True when lock `path` exists and no longer protects its task (see `inspect_lock`)."""
    state = inspect_lock(path, timeout_s=timeout_s)
    return state is not None and state.stale is not None


# --- taking and releasing ------------------------------------------------------------------

def _our_record(what: str, attempt: str | None, heartbeat_s: float) -> dict:
    return {**machine(), "pid": os.getpid(), "started": process_start(os.getpid()),
            "time": datetime.now(timezone.utc).isoformat(timespec="seconds"), "heartbeat_s": heartbeat_s,
            "task": what, "attempt": attempt}


def _create_lock(path: Path, record: dict) -> bool:
    """Put `record` at `path` unless a file is there: written to a temporary file, then
    hard-linked into place (atomic even on NFS), so no reader ever sees half a lock."""
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    try:
        with open(tmp, "w") as fh:
            fh.write(json.dumps(record))
            fh.flush()
            os.fsync(fh.fileno())
        try:
            os.link(tmp, path)
            return True
        except FileExistsError:
            return False
        except OSError:
            # NFS may report a link that did succeed as failed (a retransmitted request):
            # the temporary file then has two names.
            try:
                if os.stat(tmp).st_nlink == 2:
                    return True
            except OSError:
                pass
            return _create_exclusive(path, record)  # a filesystem without hard links
    finally:
        tmp.unlink(missing_ok=True)


def _create_exclusive(path: Path, record: dict) -> bool:
    try:
        fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
    except FileExistsError:
        return False
    with os.fdopen(fd, "w") as fh:
        fh.write(json.dumps(record))
        fh.flush()
        os.fsync(fh.fileno())
    return True


def acquire_lock(path: str | Path, what: str = "", *, attempt: str | None = None, takeover: str | None = None,
                 timeout_s: float | None = None, notice: Callable[[str], None] | None = None,
                 wait_s: float = 30.0) -> bool:
    """Take lock `path`, taking over a stale one. True if we now hold it.

    Args:
        what: the task's id, recorded in the lock.
        attempt: an id of this attempt, recorded (an executor retrying it names it in `takeover`).
        takeover: the attempt id of a previous attempt the executor knows died; its lock is
            taken over (when its process is on this machine and still running, after waiting
            up to `wait_s` for it to exit).
        timeout_s: heartbeat timeout for another host's lock (default `lock_timeout_s()`).
        notice: called with one line when a stale lock is taken over (why it was stale).

    A takeover is guarded by an exclusive `<lock>.takeover` file and replaces the lock only
    if its bytes are unchanged, so two runners that find the same stale lock cannot both
    replace it.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    record = _our_record(what, attempt, heartbeat_period_s(timeout_s))
    deadline = time.monotonic() + wait_s
    for _ in range(1000):
        if _create_lock(path, record):
            return True
        state = inspect_lock(path, timeout_s=timeout_s, takeover=takeover)
        if state is None:
            continue  # released meanwhile
        if state.stale is None:
            if takeover is None or state.owner.get("attempt") != takeover or time.monotonic() > deadline:
                return False
            time.sleep(0.2)  # the dead attempt's process is still exiting on this machine
            continue
        taken = _take_over(path, state, record)
        if taken:
            if notice is not None:
                notice(f"took over a stale lock {path} ({state.stale})")
            return True
        if taken is None:
            time.sleep(0.05)  # another runner is taking it over: look again
            continue
        return False
    return False


def _take_over(path: Path, state: LockState, record: dict) -> bool | None:
    """Replace stale lock `path` by `record` under the guard file. True if done, False if
    it cannot be (e.g. not removable), None if someone else is on it (look again)."""
    guard = path.with_name(path.name + ".takeover")
    if not _create_lock(guard, record):
        g = inspect_lock(guard, timeout_s=GUARD_TIMEOUT_S)
        if g is not None and (g.stale is not None or (g.heartbeat_age_s or 0) > GUARD_TIMEOUT_S):
            guard.unlink(missing_ok=True)  # a takeover that died half-way
        return None
    try:
        if _raw(path) != state.raw:  # changed under us: someone else got there first
            return None
        try:
            path.unlink(missing_ok=True)
        except OSError:
            return False
        return _create_lock(path, record) or None
    finally:
        guard.unlink(missing_ok=True)


def _is_ours(owner: dict | None) -> bool:
    return bool(owner) and owner.get("pid") == os.getpid() and _same_machine(owner, machine()) \
        and owner.get("started") in (None, process_start(os.getpid()))


def release_lock(path: str | Path) -> None:
    """Remove lock `path` if this process holds it."""
    path = Path(path)
    if _is_ours(read_lock(path)):
        path.unlink(missing_ok=True)


@contextmanager
def heartbeat(path: str | Path, every_s: float | None = None) -> Iterator[None]:
    """While the block runs, touch lock `path` every `every_s` seconds (default
    `heartbeat_period_s()`) from a daemon thread, so another host sees its owner alive."""
    path = Path(path)
    period = every_s or heartbeat_period_s()
    stop = threading.Event()

    def beat() -> None:
        while not stop.wait(period):
            if not _is_ours(read_lock(path)):
                print(f"warning: lost lock {path} (taken over by another runner)", file=sys.stderr)
                return
            try:
                os.utime(path)
            except OSError:
                pass

    thread = threading.Thread(target=beat, name=f"lock-heartbeat-{path.parent.name}", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()
