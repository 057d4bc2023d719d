"""Errors a user can act on. The CLI prints their message without a traceback."""


class UserError(ValueError):
    """Bad input or options: the message says what was expected, what was found, and what to do."""
