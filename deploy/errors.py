"""The base of every error the `deploy` package raises on purpose (see `sddpm.errors` for the rule)."""


class DeployError(Exception):
    """A network, input or machine limit that stops a run on Lava."""


class DeployInputError(DeployError, ValueError):
    """An argument outside what a Lava backend function accepts."""
