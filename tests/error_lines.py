"""The one assertion of the command-line tests that check a refusal: exit code 2 and one error
line, no traceback, naming what it must name."""


def assert_one_line_error(rc, err, *fragments):
    assert rc == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in err, err
    for fragment in fragments:
        assert fragment in lines[0], (fragment, lines[0])
