"""Exit codes and the errors that carry them. Expected failures are OTCError (bad usage or input, exit 2)
or a failed check (exit 1, decided by the caller); anything else is an internal error (exit 3), reported
by the CLI in one line with the path of the full traceback."""

EXIT_OK, EXIT_CHECK_FAILED, EXIT_BAD_INPUT, EXIT_INTERNAL, EXIT_INTERRUPTED = 0, 1, 2, 3, 130


class OTCError(Exception):
    """Bad input: a recipe, file, key, layer or value that cannot be used (exit 2)."""

    exit_code = EXIT_BAD_INPUT


class InternalError(RuntimeError):
    """A bug of ours found where it happened (an analysis handler that raised, a self-check that failed): exit 3,
    with a message naming the op, layer or file, never silently turned into a weaker result."""

    exit_code = EXIT_INTERNAL
