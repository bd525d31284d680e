"""``shadowtee replay``: a golden set through production and candidate, judged like live pairs."""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import tempfile
from datetime import UTC, datetime
from pathlib import Path

NAME = "replay"
HELP = "send a golden set of requests to production and candidate and print its verdict"

EXIT_CODES = {"PROMOTE": 0, "REJECT": 1, "KEEP_OBSERVING": 3}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--requests",
        type=Path,
        required=True,
        metavar="FILE.jsonl",
        help='one request body (JSON object) per line; {"path": ..., "body": ...} picks a path',
    )
    parser.add_argument("--prod", required=True, metavar="URL", help="production endpoint")
    parser.add_argument("--candidate", required=True, metavar="URL", help="candidate endpoint")
    parser.add_argument(
        "--db",
        metavar="URL",
        help="store the pairs and the verdict here (default: a throw-away SQLite file)",
    )
    parser.add_argument(
        "--experiment",
        metavar="NAME",
        help="experiment name (default: replay-<file name>-<UTC time>)",
    )
    parser.add_argument(
        "--policy",
        type=Path,
        metavar="FILE",
        help="verdict policy (default: the replay policy, which has no minimum window)",
    )
    parser.add_argument("--concurrency", type=int, default=8, help="requests in flight (default 8)")
    parser.add_argument(
        "--timeout-ms", type=float, default=10_000.0, help="per-call deadline (default 10000)"
    )
    parser.add_argument("--json", action="store_true", help="print the verdict as JSON")


def _default_experiment(requests: Path) -> str:
    stem = "".join(c if c.isalnum() or c in "._-" else "-" for c in requests.stem)[:60] or "set"
    return f"replay-{stem}-{datetime.now(UTC):%Y%m%dT%H%M%SZ}"


def run(args: argparse.Namespace) -> int:
    import logging
    import re

    from comparator.exceptions import ComparatorError
    from comparator.judge.policy import PolicyError
    from comparator.replay import REPLAY_POLICY, ReplayError, check_url, load_requests, replay
    from contract import EXPERIMENT_PATTERN

    logging.getLogger("alembic").setLevel(logging.WARNING)  # migrations of a throw-away DB
    try:
        prod = check_url("--prod", args.prod)
        cand = check_url("--candidate", args.candidate)
        if args.timeout_ms <= 0:
            raise ReplayError(f"--timeout-ms: must be positive, got {args.timeout_ms:g}")
        if args.policy is not None and not args.policy.is_file():
            raise ReplayError(f"--policy: file not found: {args.policy}")
        experiment = args.experiment or _default_experiment(args.requests)
        if not re.match(EXPERIMENT_PATTERN, experiment):
            raise ReplayError(f"--experiment: {experiment!r} must match {EXPERIMENT_PATTERN}")
        requests = load_requests(args.requests)
        with tempfile.TemporaryDirectory(prefix="shadowtee-replay-") as tmp:
            db = args.db or f"sqlite:///{Path(tmp) / 'replay.sqlite'}"
            result = asyncio.run(
                replay(
                    requests,
                    prod,
                    cand,
                    db_url=db,
                    experiment=experiment,
                    policy_path=args.policy,
                    concurrency=args.concurrency,
                    timeout_s=args.timeout_ms / 1000.0,
                )
            )
    except (ReplayError, PolicyError) as exc:
        print(f"shadowtee replay: {exc}", file=sys.stderr)
        return 2
    except ComparatorError as exc:  # the database: unreachable, refused a write
        print(f"shadowtee replay: --db: {exc}", file=sys.stderr)
        return 2
    verdict = result.verdict
    decision = str(getattr(verdict.decision, "name", verdict.decision)).upper()
    window = "custom policy" if args.policy else f"replay policy {REPLAY_POLICY.name}"
    note = (
        f"golden-set replay of {result.pairs} requests ({window}: no minimum window) — "
        "a gate before live shadowing, not a 24 h verdict"
    )
    if args.json:
        doc = verdict.to_json()
        doc["replay"] = {"pairs": result.pairs, "note": note, "db": args.db}
        print(json.dumps(doc, indent=2, default=str))
    else:
        print(note)
        print(f"experiment {result.experiment}: {decision}  (score {verdict.score:.0f})")
        for reason in verdict.reasons:
            print(f"  - {reason}")
        print("checks:")
        for check in verdict.checks:
            if str(check.status).upper() not in ("NA", "N/A"):
                print(f"  {check.id:<20} {check.status!s:<13} {check.reason}")
    return EXIT_CODES.get(decision, 3)
