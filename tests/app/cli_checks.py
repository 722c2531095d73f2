"""Checks shared by the command-line tests (a plain module with a unique name, imported by the tests)."""


def one_error_line(capsys, code, status=2):
    """The command's exit status is ``status`` and it wrote exactly one line to stderr, no traceback."""
    err = capsys.readouterr().err
    assert code == status, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]
