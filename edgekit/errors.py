"""Errors meant for the person at the keyboard.

`UserError` is raised for bad input (a path, a model, a recipe, data). The CLI prints its message on
one line and exits with code 2; anything else is a bug in edgekit and keeps its traceback.
"""


import errno

# Errors of the machine rather than of the model or of edgekit, and what the user can do about each.
MACHINE_ERRNOS = {errno.ENOSPC: "choose an --out with more free space", errno.EDQUOT: "free some of your quota",
                  errno.EROFS: "choose a writable --out", errno.EACCES: "fix the permissions or choose another --out",
                  errno.EPERM: "fix the permissions or choose another --out"}


class UserError(Exception):
    """Bad input: the message names the problem and what to do about it."""


class Terminated(BaseException):
    """SIGTERM (docker stop, a cancelled CI job, `timeout`): unwinds like Ctrl-C, so nothing is left half-written."""


def first_line(err: BaseException) -> str:
    """A library error's first non-empty line (its type's name when it has no message)."""
    return next((line.strip() for line in str(err).splitlines() if line.strip()), type(err).__name__)


def machine_error(err: BaseException) -> BaseException | None:
    """The full disk, quota or permission error, or the Ctrl-C or SIGTERM, behind `err` (libraries wrap them in
    their own errors), if any: it is reported as what it is, never as a model that cannot be converted."""
    seen = set()
    while err is not None and id(err) not in seen:
        if isinstance(err, OSError) and err.errno in MACHINE_ERRNOS or isinstance(err, (KeyboardInterrupt,
                                                                                          Terminated)):
            return err
        seen.add(id(err))
        err = err.__cause__ or err.__context__
    return None
