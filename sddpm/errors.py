"""The base of every error the `sddpm` package raises on purpose.

The `sddpm` command shows these as one line (exit status 2); any other exception is a bug and keeps its
traceback. Each subclass also derives from the builtin it refines (ValueError), so callers that catch
the builtin still do.
"""


class SddpmError(Exception):
    """A problem with what the user gave: a configuration, a checkpoint, a dataset, an input."""
