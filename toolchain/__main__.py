"""`python -m toolchain ...` (e.g. under `torchrun --nproc_per_node N -m toolchain train ...`): the `sddpm` command."""
import sys

from toolchain.cli import main

sys.exit(main())
