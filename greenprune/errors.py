"""User-facing errors: one clear line, non-zero exit from the CLI, no traceback."""


class GreenpruneError(Exception):
    """A problem with the user's input or environment, reported as one line by the CLI."""
