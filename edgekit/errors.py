"""Errors meant for the person at the keyboard.

`UserError` is raised for bad input (a path, a model, a recipe, data). The CLI prints its message on
one line and exits with code 2; anything else is a bug in edgekit and keeps its traceback.
"""


class UserError(Exception):
    """Bad input: the message names the problem and what to do about it."""


def first_line(err: BaseException) -> str:
    """A library error's first non-empty line (its type's name when it has no message)."""
    return next((line.strip() for line in str(err).splitlines() if line.strip()), type(err).__name__)
