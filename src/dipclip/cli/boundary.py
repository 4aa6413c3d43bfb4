"""The CLI's one error boundary: whatever fails ends in one ``dipclip: error:`` line and exit status 2.

A :class:`DipclipError` already says what is wrong and the fix; any other exception (a full or read-only
disk, memory, a file nobody foresaw) is described by :func:`dipclip.files.describe_error`. The traceback is
printed too only with ``--debug`` or ``DIPCLIP_DEBUG=1``. An interrupt exits 130.
"""

from __future__ import annotations

import os
import sys
import traceback
from collections.abc import Callable, Sequence

from ..errors import DipclipError

INTERRUPTED = "dipclip: interrupted; finished epochs are checkpointed, rerun with --resume"


def debug_requested(argv: Sequence[str]) -> bool:
    return os.environ.get("DIPCLIP_DEBUG", "").strip().lower() not in ("", "0", "false", "no") or "--debug" in argv


def fail(message: str, debug: bool) -> int:
    if debug:
        traceback.print_exc()
    line = " ".join(str(message).split())  # one line, whatever the exception held
    print(f"dipclip: error: {line}", file=sys.stderr)
    return 2


def run_guarded(body: Callable[[], int | None], argv: Sequence[str]) -> int:
    """``body()``'s exit code, or 2 with one error line (130 when interrupted)."""
    debug = debug_requested(argv)
    try:
        return int(body() or 0)
    except DipclipError as exc:
        return fail(str(exc), debug)
    except KeyboardInterrupt:
        print(INTERRUPTED, file=sys.stderr)
        return 130
    except Exception as exc:  # noqa: BLE001 - the one boundary: a disk, memory or a file we did not foresee
        from ..files import describe_error

        line = describe_error(exc)
        rest = [arg for arg in argv if arg != "--debug"]
        if line.startswith("unexpected ") and rest and not rest[0].startswith("-"):
            line = f"`dipclip {rest[0]}` stopped on an {line}"  # a bug or an unchecked input: name the command
        return fail(line, debug)
