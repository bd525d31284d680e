"""``shadowtee proxy``: run the sidecar (DESIGN §3)."""

from __future__ import annotations

import argparse
from pathlib import Path

NAME = "proxy"
HELP = "run the sidecar: forward to production, tee to the candidate, ship pairs"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--listen", metavar="H:P", help="data port (default 127.0.0.1:8080)")
    parser.add_argument("--prod", metavar="URL", help="production model base URL (required)")
    parser.add_argument("--candidate", metavar="URL", help="candidate model base URL (required)")
    parser.add_argument(
        "--comparator",
        metavar="URL",
        help="comparator base URL for pairs, or several separated by commas (replicas to fail over between)",
    )
    parser.add_argument("--admin-listen", metavar="H:P", help="admin port (default 127.0.0.1:9090)")
    parser.add_argument("--shadow-timeout-ms", metavar="N", help="candidate deadline (default 250)")
    parser.add_argument("--sample-rate", metavar="F", help="fraction of tee-able requests, 0..1")
    parser.add_argument("--max-inflight", metavar="N", help="bound on candidate calls in flight")
    parser.add_argument("--experiment", metavar="NAME", help="experiment name stamped on pairs")
    parser.add_argument(
        "--config", metavar="FILE", type=Path, help="TOML file with a [proxy] table"
    )


def run(args: argparse.Namespace) -> int:
    from proxy.exceptions import ProxyError
    from proxy.server import run as serve
    from proxy.settings import ProxySettings
    from shadowtee.config import ConfigError, load_settings

    settings = load_settings(
        ProxySettings,
        section="proxy",
        overrides={
            "listen": args.listen,
            "prod": args.prod,
            "candidate": args.candidate,
            "comparator": args.comparator,
            "admin_listen": args.admin_listen,
            "shadow_timeout_ms": args.shadow_timeout_ms,
            "sample_rate": args.sample_rate,
            "max_inflight": args.max_inflight,
            "experiment": args.experiment,
        },
        config_file=args.config,
    )
    try:
        return serve(settings)
    except ProxyError as exc:
        raise ConfigError(str(exc)) from None
    except OSError as exc:  # most often: a port already in use
        raise ConfigError(
            f"cannot listen on --listen/--admin-listen: {exc.strerror or exc}"
        ) from None
