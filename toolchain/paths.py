"""Files that ship with the repository."""
import os

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHIPPED_CHECKPOINT = os.path.join(ROOT, "checkpoints", "mnist-sddpm.pt")  # the default of every --checkpoint
