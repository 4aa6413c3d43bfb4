"""One writer per output folder.

Two runs writing into one ``--out`` would interleave checkpoints and metrics and leave one result silently
gone. :func:`output_lock` holds an exclusive POSIX ``flock`` on ``FOLDER/.dipclip.lock`` for the whole run;
a second process asking for the same folder is refused at once, in one line. The kernel drops the lock when
its process ends, however it ends (a crash or ``kill -9`` included), so a dead run never blocks the next
one; the lock file itself is removed on a clean exit. On systems without ``flock`` (Windows) or on file
systems that refuse it, there is no lock, as before.

While the lock is held nobody else writes into the folder, so temporary files left there by a killed
atomic write of a run's file (``.metrics.json.XXXXXXXX.tmp``, ...) are removed.
"""

from __future__ import annotations

import contextlib
import errno
import os
import socket
import time
from collections.abc import Iterator
from pathlib import Path

from ..errors import DipclipError
from ..paths import remove_stale_temps

LOCK_NAME = ".dipclip.lock"
# what runs write into their folders: only temporaries of such files are removed (``--out`` may be any folder)
OUTPUT_SUFFIXES = (".json", ".pt", ".safetensors", ".csv", ".md")


class FolderInUse(DipclipError):
    """Another live process holds the lock."""


def _hold(fd: int | None, line: str) -> None:
    """Write who holds the lock into its file (what a refusal and `dipclip status` show)."""
    if fd is not None:
        os.ftruncate(fd, 0)
        os.write(fd, f"{line}\n".encode())


def _release(fd: int | None, path: Path) -> None:
    """Remove the lock file (a clean exit leaves none) and drop the lock."""
    if fd is not None:
        with contextlib.suppress(OSError):
            os.unlink(path)
        os.close(fd)


def _holder(fd: int) -> str:
    """' (pid N on HOST)' from the lock file's content, or '' when it is not readable yet."""
    try:
        text = os.pread(fd, 200, 0).decode(errors="replace").split()
    except OSError:
        return ""
    return f" (pid {text[0]} on {text[1]})" if len(text) >= 2 else ""


def _acquire(path: Path, flag: str, folder: Path) -> int | None:
    """An fd holding the exclusive lock on ``path``; ``None`` where locking is not available."""
    try:
        import fcntl
    except ImportError:
        return None
    while True:
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
        except OSError as exc:
            raise DipclipError(f"cannot create the lock file {path} ({exc.strerror}); {flag} must be a writable "
                               "folder") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _holder(fd)
            os.close(fd)
            raise FolderInUse(f"{flag} {folder} is in use by another dipclip run{holder}; wait for it to finish "
                              f"or choose another {flag}") from None
        except OSError as exc:
            os.close(fd)
            if exc.errno in (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOTSUP, errno.EINVAL):
                return None  # a file system without locks: run unlocked, as on Windows
            raise
        # The previous holder removes the file on exit: if ours is no longer the file at ``path``, retry.
        try:
            if os.path.samestat(os.fstat(fd), os.stat(path)):
                return fd
        except FileNotFoundError:
            pass
        os.close(fd)


@contextlib.contextmanager
def output_lock(folder: str | Path, flag: str = "--out") -> Iterator[Path]:
    """Hold ``folder`` (created if missing) for this process; :class:`DipclipError` if another one holds it.

    ``flag`` names the option the folder came from, for the messages. Empty folders this call created are
    removed again on exit, so a run refused later (bad data, say) leaves nothing behind.
    """
    folder = Path(folder).expanduser()
    if folder.exists() and not folder.is_dir():
        raise DipclipError(f"{flag} {folder} is a file, not a folder; choose another {flag}")
    created = [p for p in (folder, *folder.parents) if not p.exists()]  # innermost first
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise DipclipError(f"cannot create {flag} {folder} ({exc.strerror}); choose a writable folder") from None
    path = folder / LOCK_NAME
    fd = _acquire(path, flag, folder)
    try:
        _hold(fd, f"{os.getpid()} {socket.gethostname()}")
        if fd is not None:
            for sub in (folder, *(p for p in folder.iterdir() if p.is_dir() and not p.is_symlink())):
                remove_stale_temps(sub, min_age_seconds=0, suffixes=OUTPUT_SUFFIXES)
        yield folder
    finally:
        _release(fd, path)
        for made in created:  # only succeeds while empty: a run that wrote nothing leaves nothing behind
            try:
                made.rmdir()
            except OSError:
                break


CLAIM_NAME = ".dipclip-claim.lock"


@contextlib.contextmanager
def claim(folder: str | Path) -> Iterator[bool]:
    """Claim ``folder`` for one worker of a sweep: ``True`` when this process now holds it, ``False`` when
    another live process does (it is running there). Non-blocking. The claim file says who holds it (pid, host,
    SLURM job, since); the kernel drops the lock when the holder dies, so a dead worker's run is claimed by the
    next one (its leftover file shows the run as stale until then). Without ``flock`` every claim succeeds."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / CLAIM_NAME
    try:
        fd = _acquire(path, "run folder", folder)
    except FolderInUse:  # any other failure (an unwritable folder) is the command's one-line error
        yield False
        return
    try:
        job = os.environ.get("SLURM_ARRAY_JOB_ID") or os.environ.get("SLURM_JOB_ID") or "-"
        _hold(fd, f"{os.getpid()} {socket.gethostname()} {job} {time.time():.0f}")
        yield True
    finally:
        _release(fd, path)


def claim_holder(folder: str | Path) -> tuple[str, dict] | None:
    """``("running", who)`` while a live process holds ``folder``'s claim, ``("stale", who)`` when a claim file
    is left by a process that died, ``None`` when nobody claimed it. ``who``: pid, host, job, since."""
    path = Path(folder) / CLAIM_NAME
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return None
    try:
        text = os.pread(fd, 200, 0).decode(errors="replace").split()
        who = dict(zip(("pid", "host", "job", "since"), text, strict=False))
        try:
            import fcntl

            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return "running", who
        except (ImportError, OSError):
            return "running", who
        fcntl.flock(fd, fcntl.LOCK_UN)
        return "stale", who
    finally:
        os.close(fd)
