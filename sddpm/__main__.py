import sys

from toolchain.cli import main  # the command lives in the top layer, which may import every package

sys.exit(main())
