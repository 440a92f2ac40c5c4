"""The base of every error the `export` package raises on purpose (see `sddpm.errors` for the rule)."""


class ExportError(Exception):
    """A model, network or file that the compiler or a writer/reader cannot take."""


class ExportInputError(ExportError, ValueError):
    """An argument outside what an export function accepts."""
