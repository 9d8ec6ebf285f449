"""`python -m teachkit`: the command line (teachkit/experiments/cli.py)."""

import sys

from teachkit.experiments.cli import main

if __name__ == "__main__":
    sys.exit(main())
