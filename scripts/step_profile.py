"""Real loads' engine steps beside the simulator's, from the token timelines real trials keep (issue #16).

    python scripts/step_profile.py LOG ... --server-logs TAR_OR_DIR ...

e.g. ``results/h100/multiseed/*.jsonl --server-logs results/h100/multiseed/server_logs_*.tar.gz``. Every trial of
the logs whose timeline is in the server logs is replayed on the packaged sim; both loads are cut into steps the
same way (``sloguard_lib.measure.timeline.steps``) and printed as real / sim: the step count (the server's own
counter in brackets: where it and the real cut differ the cut is not to be trusted on that machine), the share of
steps that finished a prefill, decode and prefill step lengths (p50, p99), the share of token gaps that ended in a
prefill step, and ITL p99.
"""

from __future__ import annotations

import argparse

from sloguard_lib.analysis.steps import rows, table


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("logs", nargs="+", metavar="LOG", help="real studies' trial logs")
    ap.add_argument("--server-logs", nargs="+", required=True, metavar="SRC",
                    help="server-log folders or the server_logs*.tar.gz a device call carried back")
    args = ap.parse_args()
    found = rows(args.logs, args.server_logs)
    if not found:
        raise SystemExit("no trial of these logs has a timeline in those server logs (real trials keep one since "
                         "2026-12-08)")
    print(table(found))


if __name__ == "__main__":
    main()
