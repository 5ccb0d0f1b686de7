"""Errors whose message is meant for the operator: the CLI prints them without a traceback."""


class UserError(Exception):
    """A problem the operator can fix (bad path, bad data, missing service)."""
