"""``python -m metrics.reindex`` — the same as ``metrics reindex``."""

import sys

from metrics.cli import main

if __name__ == "__main__":
    sys.exit(main(["reindex", *sys.argv[1:]]))
