"""``python -m metrics.backup`` — the same as ``metrics backup``."""

import sys

from metrics.cli import main

if __name__ == "__main__":
    sys.exit(main(["backup", *sys.argv[1:]]))
