"""The errors a user can cause, as the `sddpm` command sees them.

Every package raises its own base on purpose (`sddpm.errors`, `export.errors`, `deploy.errors`,
`simulators.errors`); the command prints those, and OSError (a missing or unwritable file), as one line
and exits 2. Anything else is a bug and keeps its traceback.
"""
from deploy.errors import DeployError
from export.errors import ExportError
from simulators.errors import SimulatorError
from sddpm.errors import SddpmError


class UsageError(Exception):
    """Options that do not fit together, or a file that is not what an option asks for."""


USER_ERRORS = (SddpmError, ExportError, SimulatorError, DeployError, UsageError, OSError)
