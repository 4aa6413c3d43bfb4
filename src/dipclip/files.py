"""Reading the files users hand us, and writing ours: every failure is one line that names the file.

A JSON or safetensors file can be missing, a folder, a FIFO that would block forever, a symlink loop, not
UTF-8, nested deeper than the parser's stack, or truncated; each of these is a :class:`DipclipError` saying
which file and what to do, never a traceback. :func:`describe_error` turns the exceptions that still reach
the CLI's boundary (a full disk, a read-only folder, memory) into the same kind of line.
"""

from __future__ import annotations

import errno
import json
import os
import stat
from pathlib import Path
from typing import Any

from .errors import DipclipError


def file_mode() -> int:
    """``0o666`` minus the process umask: the mode ``open()`` would give a new file (mkstemp gives 0600)."""
    try:  # Linux reports it without changing it (os.umask would, for a moment, for every thread)
        with open("/proc/self/status", encoding="ascii") as status:
            mask = next(int(line.split()[1], 8) for line in status if line.startswith("Umask:"))
    except (OSError, StopIteration, ValueError, IndexError):
        mask = os.umask(0o022)
        os.umask(mask)
    return 0o666 & ~mask


def check_regular_file(path: str | Path, what: str, fix: str) -> Path:
    """``path`` if it is an existing regular file (after symlinks); a one-line error naming it otherwise."""
    path = Path(path)
    try:
        mode = os.stat(path).st_mode
    except OSError as exc:
        raise DipclipError(f"cannot read {what} {path}: {_reason(exc)}; {fix}") from None
    if not stat.S_ISREG(mode):
        kind = "a folder" if stat.S_ISDIR(mode) else "not a regular file (a pipe, device or socket)"
        raise DipclipError(f"{what} {path} is {kind}; {fix}")
    return path


def read_json(path: str | Path, what: str = "JSON file", fix: str = "fix or replace the file",
              expect: type = dict) -> Any:
    """The JSON value in ``path`` (of type ``expect``), or one line naming the file and what is wrong."""
    path = check_regular_file(path, what, fix)
    try:
        with open(path, encoding="utf-8") as handle:
            value = json.load(handle)
    except json.JSONDecodeError as exc:
        raise DipclipError(f"{what} {path} is not valid JSON ({exc.msg}, line {exc.lineno}); {fix}") from None
    except UnicodeDecodeError:
        raise DipclipError(f"{what} {path} is not UTF-8 text; {fix}") from None
    except RecursionError:
        raise DipclipError(f"{what} {path} is nested too deeply to be a {what}; {fix}") from None
    except OSError as exc:
        raise DipclipError(f"cannot read {what} {path}: {_reason(exc)}; {fix}") from None
    if expect is not None and not isinstance(value, expect):
        raise DipclipError(f"{what} {path} holds a JSON {type(value).__name__}, expected an object; {fix}")
    return value


def read_safetensors(path: str | Path, what: str = "safetensors file", fix: str = "fix or replace the file") -> dict:
    """The tensors in a safetensors file, or one line naming it (truncated, not safetensors, unreadable)."""
    from safetensors.torch import load_file

    path = check_regular_file(path, what, fix)
    try:
        return load_file(str(path))
    except OSError as exc:
        raise DipclipError(f"cannot read {what} {path}: {_reason(exc)}; {fix}") from None
    except Exception as exc:  # noqa: BLE001 - safetensors raises its own SafetensorError and others
        raise DipclipError(f"{what} {path} is damaged or not a safetensors file ({_first_line(exc)}); {fix}") from None


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0][:160]}" if text else type(exc).__name__


def _reason(exc: OSError) -> str:
    reasons = {
        errno.ENOENT: "it does not exist",
        errno.ELOOP: "too many levels of symbolic links (a symlink loop)",
        errno.EACCES: "permission denied",
        errno.EPERM: "permission denied",
        errno.ENOTDIR: "a part of the path is a file, not a folder",
        errno.EISDIR: "it is a folder",
        errno.ENAMETOOLONG: "the name is too long",
    }
    return reasons.get(exc.errno, exc.strerror or type(exc).__name__)


OS_FIXES = {
    errno.ENOSPC: ("no space left on the device", "free some space or write to another folder (--out)"),
    errno.EDQUOT: ("disk quota exceeded", "free some space or write to another folder (--out)"),
    errno.EROFS: ("read-only file system", "write to another folder (--out)"),
    errno.EACCES: ("permission denied", "check the permissions, or use another path"),
    errno.EPERM: ("operation not permitted", "check the permissions, or use another path"),
    errno.ENOTDIR: ("a part of the path is a file, not a folder", "give a folder path that is not a file"),
    errno.EEXIST: ("a file is in the way where a folder is needed", "give a folder path that is not a file"),
    errno.EISDIR: ("it is a folder, a file was expected", "give the path of a file"),
    errno.ELOOP: ("too many levels of symbolic links (a symlink loop)", "fix or remove the link"),
    errno.ENOENT: ("it does not exist", "check the path"),
    errno.ENAMETOOLONG: ("the name is too long", "use a shorter path"),
    errno.EMFILE: ("too many open files", "use fewer --workers or raise `ulimit -n`"),
}


def describe_error(exc: BaseException) -> str:
    """One line for an exception that reached the CLI's boundary unexpectedly: what, where, and the fix."""
    if isinstance(exc, OSError):
        where = " -> ".join(str(name) for name in (exc.filename, exc.filename2) if name is not None)
        what, fix = OS_FIXES.get(exc.errno, (exc.strerror or _first_line(exc), "check the path and try again"))
        return f"{where}: {what}; {fix}" if where else f"{what}; {fix}"
    if isinstance(exc, MemoryError):
        return ("out of memory; use a smaller --batch-size or fewer --workers, and check the input for absurd "
                "values (a huge label or image size)")
    if isinstance(exc, RecursionError):
        return "an input is nested too deeply to process (a deeply nested JSON file?); check the files given"
    if isinstance(exc, json.JSONDecodeError):
        return f"invalid JSON ({exc.msg}, line {exc.lineno}); check the JSON files given"
    if isinstance(exc, UnicodeDecodeError):
        return "a text file is not UTF-8; check the files given"
    return (f"unexpected {_first_line(exc)}; rerun with --debug (or DIPCLIP_DEBUG=1) for the traceback and "
            "report it if the input looks right")
