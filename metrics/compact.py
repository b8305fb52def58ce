"""``python -m metrics.compact`` — the same as ``metrics compact``."""

import sys

from metrics.cli import main

if __name__ == "__main__":
    sys.exit(main(["compact", *sys.argv[1:]]))
