"""``python -m metrics.restore`` — the same as ``metrics restore``."""

import sys

from metrics.cli import main

if __name__ == "__main__":
    sys.exit(main(["restore", *sys.argv[1:]]))
