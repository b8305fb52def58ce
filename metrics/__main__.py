"""``python -m metrics …`` runs the command line."""

from metrics.cli import run

run()
