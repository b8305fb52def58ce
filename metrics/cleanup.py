"""``python -m metrics.cleanup`` — the same as ``metrics cleanup``."""

import sys

from metrics.cli import main

if __name__ == "__main__":
    sys.exit(main(["cleanup", *sys.argv[1:]]))
