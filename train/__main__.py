"""`python -m train --config train/configs/cpu_default.yaml [--key value ...]`; see `--help`."""

import sys

from .loop import main

if __name__ == "__main__":
    sys.exit(main())
