"""What a run read, identified by the bytes of its files, not by their names.

A result, a checkpoint or a stored feature is reused only for the same data. File names cannot tell: an
archive extracted over a folder replaces images in place (same names, sizes, even modification times), a
split file can swap two classes' folders, and another ``--data`` root can hold other images under the same
names. So every image a run trains on or evaluates is identified by the SHA-256 of its content.

Hashing reads every file once; later reads are served by a memo keyed by what ``stat`` says of the file, as
git's index does: device, inode, size, modification and change times in nanoseconds. A rename, a copy, an
in-place write and an extraction all change that key (the change time cannot be set by a user), so a memo
hit is always the file's current content. Files modified within :data:`RACY_SECONDS` of the moment they
were hashed are not memoised (git's "racy" rule: a write in the same clock tick leaves the key unchanged).
The memo lives in memory and, across processes, in ``cache_root()/file-digests.sqlite`` (no paths are
stored: the key is the inode's); a cache folder that cannot be written leaves the memory memo alone.
"""

from __future__ import annotations

import hashlib
import json
import os
import sqlite3
import time
from collections.abc import Iterable, Sequence
from pathlib import Path

from ..errors import DipclipError
from ..paths import cache_root
from .images import open_regular
from .types import DatasetSplits, Datum

MEMO_NAME = "file-digests.sqlite"
RACY_SECONDS = 2.0  # coarse file-system clocks (FAT: 2 s) cannot tell two writes within this apart
IDENTITY_VERSION = 2  # 1: names and labels only; 2: content of every file

StatKey = tuple[int, int, int, int, int]

_MEMORY: dict[StatKey, str] = {}
_DISK_FAILED = False


def stat_key(info: os.stat_result) -> StatKey:
    return (info.st_dev, info.st_ino, info.st_size, info.st_mtime_ns, info.st_ctime_ns)


def _open_memo() -> sqlite3.Connection | None:
    """The on-disk memo, or ``None`` when the cache folder cannot hold it (the memory memo still serves)."""
    global _DISK_FAILED
    if _DISK_FAILED:
        return None
    try:
        folder = cache_root()
        folder.mkdir(parents=True, exist_ok=True)
        connection = sqlite3.connect(folder / MEMO_NAME, timeout=60)
        connection.execute("CREATE TABLE IF NOT EXISTS digests (dev INTEGER, ino INTEGER, size INTEGER, "
                           "mtime_ns INTEGER, ctime_ns INTEGER, sha256 TEXT, "
                           "PRIMARY KEY (dev, ino, size, mtime_ns, ctime_ns))")
        return connection
    except (OSError, sqlite3.Error):
        _DISK_FAILED = True  # the feature and few-shot caches already warn about this folder, once each
        return None


def _hash_file(path: str) -> tuple[str, os.stat_result]:
    """(SHA-256 of the file's bytes, its stat taken on the open descriptor before reading)."""
    with open_regular(path) as handle:
        info = os.fstat(handle.fileno())
        digest = hashlib.file_digest(handle, "sha256").hexdigest()
    return digest, info


def file_digests(paths: Iterable[str], progress: bool = False, desc: str = "hash images") -> dict[str, str]:
    """``path -> SHA-256 of its content`` for every path (each hashed at most once while it is unchanged).

    A path that is missing or not a regular file raises :class:`DipclipError` naming it (the data checks
    refuse those before this runs; ``skip_bad_images`` runs see ``"missing"`` for them instead)."""
    unique = list(dict.fromkeys(paths))
    found: dict[str, str] = {}
    pending: dict[str, StatKey] = {}
    for path in unique:
        try:
            key = stat_key(os.stat(path))
        except OSError:
            found[path] = "missing"
            continue
        if key in _MEMORY:
            found[path] = _MEMORY[key]
        else:
            pending[path] = key
    if not pending:
        return found
    connection = _open_memo()
    if connection is not None:
        try:
            with connection:
                for path, key in list(pending.items()):
                    row = connection.execute("SELECT sha256 FROM digests WHERE dev=? AND ino=? AND size=? AND "
                                             "mtime_ns=? AND ctime_ns=?", key).fetchone()
                    if row is not None:
                        found[path] = _MEMORY[key] = row[0]
                        del pending[path]
        except sqlite3.Error:
            connection.close()
            connection = None
    if pending:
        from tqdm.auto import tqdm

        fresh: list[tuple[StatKey, str]] = []
        for path in tqdm(list(pending), desc=desc, leave=False, disable=None if progress else True):
            began = time.time()
            try:
                digest, info = _hash_file(path)
            except DipclipError:
                found[path] = "missing"
                continue
            found[path] = digest
            key = stat_key(info)
            if began - max(info.st_mtime, info.st_ctime) > RACY_SECONDS:
                _MEMORY[key] = digest
                fresh.append((key, digest))
        if connection is not None and fresh:
            try:
                with connection:
                    connection.executemany("INSERT OR REPLACE INTO digests VALUES (?, ?, ?, ?, ?, ?)",
                                           [(*key, digest) for key, digest in fresh])
            except sqlite3.Error:
                pass  # the memo is an optimisation; the digests themselves are right
    if connection is not None:
        connection.close()
    return found


def _relative(path: str, root: Path | None) -> str:
    where = Path(path)
    if root is not None and where.is_relative_to(root):
        where = where.relative_to(root)
    return where.as_posix()


def items_identity(items: Sequence[Datum], root: Path | str | None = None, progress: bool = False) -> str:
    """SHA-256 over every item's path (relative to ``root``), label and content digest, in order."""
    root = Path(root) if root is not None else None
    digests = file_digests((item.path for item in items), progress=progress)
    digest = hashlib.sha256()
    for item in items:
        digest.update(f"{_relative(item.path, root)}\t{item.label}\t{digests[item.path]}\n".encode())
    return digest.hexdigest()


def data_identity(parts: Sequence[tuple[str, DatasetSplits, str]], progress: bool = False) -> str:
    """The identity of what a run reads: for each ``(name, splits, split)`` the class list and every item of
    ``splits.split(split)`` by content. Two runs have the same identity only when they read the same bytes
    under the same labels and class names (the data root itself may differ)."""
    digest = hashlib.sha256(f"dipclip-data-identity:{IDENTITY_VERSION}\n".encode())
    for name, splits, split in parts:
        items = splits.split(split)
        digest.update(json.dumps([name, split, list(splits.classnames), len(items)]).encode())
        digest.update(items_identity(items, splits.image_root, progress).encode())
    return digest.hexdigest()[:24]


def forget_memory() -> None:
    """Drop the in-process memo (tests: a second process's view)."""
    _MEMORY.clear()
