"""``shadowtee comparator``: the ingest API, memory sampler and verdict API."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

NAME = "comparator"
HELP = "run the comparator: ingest pairs, sample memory, serve summaries and verdicts"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--listen", metavar="HOST:PORT", help="where to listen (default 127.0.0.1:8090)"
    )
    parser.add_argument(
        "--workers",
        type=int,
        metavar="N",
        help="processes serving the API on one socket: ingest grows with cores (default 1)",
    )
    parser.add_argument(
        "--db",
        metavar="URL",
        help="sqlite:///PATH or postgresql://… (default sqlite:///shadowtee.db)",
    )
    parser.add_argument("--policy", metavar="FILE", help="verdict policy TOML (default: built in)")
    parser.add_argument(
        "--scrape",
        action="append",
        metavar="SIDE=URL",
        help="a /metrics URL to sample memory from: prod=URL, candidate=URL (repeatable)",
    )
    parser.add_argument(
        "--scrape-experiment", metavar="NAME", help="experiment the memory samples belong to"
    )
    parser.add_argument(
        "--token",
        metavar="TOKEN",
        help="bearer token every /v1/ route requires, reads too (prefer SHADOWTEE_COMPARATOR__TOKEN or a secret file: flags show in ps)",
    )
    parser.add_argument("--max-body-bytes", type=int, metavar="N", help="largest ingest body")
    parser.add_argument(
        "--store-request-bodies",
        action="store_true",
        default=None,
        help="keep request and response bodies of pairs (off by default)",
    )
    parser.add_argument(
        "--verdict-interval-s",
        type=float,
        metavar="S",
        help="judge every experiment this often (default 300; 0 disables the periodic looks)",
    )
    parser.add_argument(
        "--webhook-url",
        metavar="URL",
        help="POST signed decision changes here (secret: SHADOWTEE_COMPARATOR__WEBHOOK_SECRET)",
    )
    parser.add_argument(
        "--replica",
        metavar="NAME",
        help="this replica's name in the looks and memory samples it stores (default: host-pid)",
    )
    parser.add_argument(
        "--config", type=Path, metavar="FILE", help="TOML file with a [comparator] table"
    )


def _scrape(values: list[str] | None) -> dict[str, str] | None:
    if not values:
        return None
    out = {}
    for v in values:
        side, sep, url = v.partition("=")
        if not sep:
            from shadowtee.config import ConfigError

            raise ConfigError(f"invalid --scrape: expected SIDE=URL, got {v!r}")
        out[side.strip()] = url.strip()
    return out


def run(args: argparse.Namespace) -> int:
    from comparator.app import run as run_app
    from comparator.exceptions import StoreError
    from comparator.settings import ComparatorSettings
    from shadowtee.config import load_settings

    overrides: dict[str, Any] = {
        "listen": args.listen,
        "workers": args.workers,
        "db": args.db,
        "policy": args.policy,
        "verdict_interval_s": args.verdict_interval_s,
        "webhook_url": args.webhook_url,
        "scrape": _scrape(args.scrape),
        "scrape_experiment": args.scrape_experiment,
        "token": args.token,
        "max_body_bytes": args.max_body_bytes,
        "store_request_bodies": args.store_request_bodies,
        "replica": args.replica,
    }
    settings = load_settings(
        ComparatorSettings, section="comparator", overrides=overrides, config_file=args.config
    )
    if settings.policy:
        from comparator.judge.policy import PolicyError, load_policy

        try:
            load_policy(Path(settings.policy))
        except PolicyError as exc:
            print(f"shadowtee comparator: --policy: {exc}", file=sys.stderr)
            return 2
    try:
        return run_app(settings)
    except StoreError as exc:
        print(f"shadowtee comparator: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:  # e.g. the port is taken
        print(
            f"shadowtee comparator: --listen {settings.listen}: {exc.strerror or exc}",
            file=sys.stderr,
        )
        return 2
