"""Errors of the `graven` command."""


class UsageError(Exception):
    """Bad input from the user: printed as one line, exit status 2."""
