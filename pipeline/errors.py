"""Errors that the CLI turns into exit codes: 2 for bad input or usage, 1 for a failed check."""


class OTCError(Exception):
    """Bad input: a recipe, file, key or value that cannot be used (exit 2)."""

    exit_code = 2


class CheckFailed(OTCError):
    """A validation gate failed (exit 1): the run itself worked."""

    exit_code = 1
