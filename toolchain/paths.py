"""Files that ship with the repository."""
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# `pip install .` (not editable) copies the demo model here (pyproject's [tool.setuptools.data-files])
INSTALLED_DATA = os.path.join(sys.prefix, "share", "sddpm-loihi")


def shipped(relative: str) -> str:
    """A shipped file: in the clone the package runs from, else where `pip install .` put it."""
    for base in (ROOT, INSTALLED_DATA):
        if os.path.isfile(os.path.join(base, relative)):
            return os.path.join(base, relative)
    return os.path.join(ROOT, relative)  # neither: the error names the clone's path


SHIPPED_CHECKPOINT = shipped(os.path.join("checkpoints", "mnist-sddpm.pt"))  # the default of every --checkpoint
