"""``shadowtee demo``: production and candidate servers, proxy, comparator, traffic, verdict, report."""

from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path

NAME = "demo"
HELP = "run the whole loop on this machine with the bundled digits models (about a minute)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--out",
        type=Path,
        default=Path("demo-out"),
        metavar="DIR",
        help="where the database, logs and report go (default ./demo-out)",
    )
    parser.add_argument(
        "--candidate",
        choices=["good", "bad"],
        default="good",
        help="good: v2, agrees with production on ~98%% of inputs; bad: v3, trained on corrupted "
        "labels (default good)",
    )
    parser.add_argument(
        "--requests", type=int, default=2000, metavar="N", help="requests to send (default 2000)"
    )
    parser.add_argument(
        "--rate",
        type=float,
        default=100.0,
        metavar="R",
        help="requests per second, 0 = as fast as possible (default 100: steady traffic; flat "
        "out on a small machine the models compete for CPU and the latency comparison measures "
        "that instead of the models)",
    )
    parser.add_argument(
        "--concurrency", type=int, default=4, metavar="N", help="requests in flight (default 4)"
    )
    parser.add_argument(
        "--models", type=Path, metavar="DIR", help="model registry (default: the bundled models/)"
    )


def run(args: argparse.Namespace) -> int:
    from shadowtee.demo import DemoError, DemoOptions, run_demo
    from shadowtee.supervise import ChildError

    if args.requests < 1:
        print("shadowtee demo: --requests: must be at least 1", file=sys.stderr)
        return 2
    if args.rate < 0:
        print("shadowtee demo: --rate: must be 0 or more", file=sys.stderr)
        return 2
    if args.concurrency < 1:
        print("shadowtee demo: --concurrency: must be at least 1", file=sys.stderr)
        return 2
    opts = DemoOptions(
        out=args.out,
        candidate=args.candidate,
        requests=args.requests,
        concurrency=args.concurrency,
        rate=args.rate,
    )
    if args.models is not None:
        opts = dataclasses.replace(opts, models=args.models)
    if not (opts.models / "digits" / "1" / "model.onnx").is_file():
        print(
            f"shadowtee demo: --models: no digits/1/model.onnx under {opts.models}", file=sys.stderr
        )
        return 2
    try:
        return run_demo(opts)
    except (DemoError, ChildError) as exc:
        print(f"shadowtee demo: {exc}", file=sys.stderr)
        return 2
