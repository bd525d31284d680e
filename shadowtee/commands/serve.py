"""``shadowtee serve``: serve an ONNX model over the Open Inference Protocol v2."""

from __future__ import annotations

import argparse
from pathlib import Path

NAME = "serve"
HELP = "serve an ONNX model over the Open Inference Protocol v2 (HTTP/JSON)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--model",
        help="the ONNX file to serve, or DIR#name@alias: the version a registry alias names, "
        "swapped live when the alias moves",
    )
    parser.add_argument("--name", help="model name in the /v2/models/{name} routes")
    parser.add_argument("--version", help="model version of an ONNX file (default 1)")
    parser.add_argument("--listen", help="HOST:PORT to listen on (default 127.0.0.1:8000)")
    parser.add_argument(
        "--device", choices=["auto", "cpu", "cuda"], help="execution provider (default auto)"
    )
    parser.add_argument("--max-batch", type=int, help="rows per session.run; 1 = no batching")
    parser.add_argument("--max-delay-ms", type=float, help="longest wait for a batch to fill")
    parser.add_argument("--max-queue", type=int, help="waiting requests before 503")
    parser.add_argument("--warmup-runs", type=int, help="warm-up inferences before ready")
    parser.add_argument("--intra-op-threads", type=int, help="onnxruntime threads (0 = default)")
    parser.add_argument("--config", type=Path, help="TOML file with a [serve] table")


def run(args: argparse.Namespace) -> int:
    # Settings first, and only then onnxruntime & co.: a bad flag fails in a fraction of a second.
    from serving.settings import ServeSettings
    from shadowtee.config import ConfigError, load_settings

    fields = [
        *("model", "name", "version", "listen", "device", "max_batch", "max_delay_ms"),
        *("max_queue", "warmup_runs", "intra_op_threads"),
    ]
    settings = load_settings(
        ServeSettings,
        section="serve",
        overrides={f: getattr(args, f) for f in fields},
        config_file=args.config,
    )
    from serving.exceptions import ModelLoadError
    from serving.server import run as serve_forever

    try:
        serve_forever(settings)
    except ModelLoadError as exc:
        raise ConfigError(str(exc)) from None
    return 0
