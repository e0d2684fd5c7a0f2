"""Errors the user can fix.

Every problem with user input (an unknown knob, an empty range, an impossible SLO, a broken file)
raises :class:`InputError`, whose message names the offending thing. The CLI turns it into a one-line
message and exit code 2 instead of a traceback, so scripts can tell "you asked for something
impossible" apart from "the tuner broke".
"""


class InputError(ValueError):
    """A user-supplied value is invalid; the message names it and says why."""


def yaml_problem(e: Exception) -> str:
    """A YAML parse error in one line: what and where (PyYAML's own text spans several, with a caret)."""
    mark = getattr(e, "problem_mark", None)
    where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
    return f"{getattr(e, 'problem', None) or e}{where}"
