"""Running the CLI in-process and checking a refusal, shared by the tests of bad input."""

from __future__ import annotations

from dipclip.cli import main


def run(argv, capsys) -> tuple[int, str, str]:
    """(exit code, stdout, stderr) of ``dipclip ARGV`` run in this process (argparse exits included)."""
    try:
        code = main([str(a) for a in argv])
    except SystemExit as exit_info:  # argparse errors and --help
        code = exit_info.code
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def assert_refused(code: int, err: str, *expected: str) -> str:
    """Exit 2, the last stderr line is the one error line, no traceback, it says each of ``expected``;
    return that line."""
    assert code == 2, err
    assert "Traceback" not in err, err
    lines = err.rstrip("\n").split("\n")
    line = lines[-1]
    assert line.startswith("dipclip: error: "), err
    assert not any(other.startswith("dipclip: error") for other in lines[:-1]), err
    for text in expected:
        assert text in line, line
    return line
