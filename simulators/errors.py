"""The base of every error the simulators raise on purpose. Their own, not shared with `export`: the
simulators import nothing of the packages they check (see `sddpm.errors` for the rule)."""


class SimulatorError(Exception):
    """A network file, input or timing that the simulator cannot run."""


class SimulatorInputError(SimulatorError, ValueError):
    """An argument outside what a simulator function accepts."""
