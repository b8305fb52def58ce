"""``python -m flows.serve``: serve the scheduled jobs from this process (what ``metrics deploy`` runs).

Example: python -m flows.serve --limit 2 collect-system-metrics compact-lake
"""

from __future__ import annotations

import argparse
import sys

from prefect import serve

from flows.deployments import GROUPS, JOBS, runner_deployments, select_jobs
from metrics.errors import MetricsError
from metrics.settings import get_settings


def main(argv: list[str] | None = None) -> int:
    """Serve the chosen jobs (default: all) with their schedules until SIGINT / SIGTERM."""
    parser = argparse.ArgumentParser(prog="python -m flows.serve", description=__doc__.splitlines()[0])
    parser.add_argument(
        "jobs", nargs="*", metavar="JOB", help=f"jobs to serve (default all): {', '.join(j.name for j in JOBS)}"
    )
    parser.add_argument("--group", action="append", choices=GROUPS, help="serve the jobs of this group (repeatable)")
    parser.add_argument("--limit", type=int, default=None, help="most flow runs at once (default: no limit)")
    args = parser.parse_args(argv)
    try:
        deployments = runner_deployments(get_settings(), select_jobs(args.group or GROUPS, args.jobs))
    except MetricsError as exc:
        print(f"Error: {exc}", file=sys.stderr)
        return 1
    # Schedules are paused when the runner stops, so no runs pile up while nothing serves them;
    # the next start un-pauses them.
    serve(*deployments, limit=args.limit, pause_on_shutdown=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
