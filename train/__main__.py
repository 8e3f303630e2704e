"""`python -m train --config train/configs/cpu_default.yaml [--key value ...]`; see `--help`."""

import sys

from .loop import main
from .ranks import leave

if __name__ == "__main__":
    code = main()
    leave(code)  # a rank of a multi-process launch ends here, skipping the interpreter's teardown of gloo
    sys.exit(code)
