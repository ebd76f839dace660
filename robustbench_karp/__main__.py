"""`python -m robustbench_karp ...` (and `torchrun -m robustbench_karp train ...`) run the CLI."""

import sys

from robustbench_karp.cli import main

if __name__ == "__main__":
    sys.exit(main())
