"""Errors a user can cause. The CLI prints the message and exits 1, never a traceback."""


class UserError(Exception):
    """A bad schedule, a missing file, a run dir in the wrong state: the message names the
    file, the field where it applies, and what to do."""
