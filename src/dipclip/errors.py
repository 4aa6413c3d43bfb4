"""User-facing errors.

Everything a user can cause (a bad path, an unknown option value, an incompatible adapter) raises
:class:`DipclipError` with a one-line message that says what is wrong and how to fix it. The CLI prints
that line and exits non-zero; library users can catch it.
"""


class DipclipError(Exception):
    """A problem with the user's input, reported as one line without a traceback."""


def warn(message: str) -> None:
    """One line on stderr (``dipclip: warning: ...``) for something the user must know that does not stop
    the command: a cache entry recomputed, fewer images than asked for."""
    import sys

    print(f"dipclip: warning: {message}", file=sys.stderr, flush=True)
