"""``shadowtee tee``: steer the tee of a fleet of sidecars through their admin ports.

::

    shadowtee tee pause|resume|status --admin URL [--admin URL ...] --token-file FILE
    shadowtee tee rate 0.05 --admin URL ... --token-file FILE
    shadowtee tee candidate http://10.0.0.7:8001 --admin URL ... --token-file FILE

Every sidecar is called at once; one line per sidecar says ``ok`` (and its tee's live settings) or
``FAIL`` (and why). Exit 0 when every sidecar succeeded, 1 when any failed, 2 on a usage error
(a bad value is refused here, before any sidecar is called). ``status`` needs no token.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from pathlib import Path
from typing import Any

NAME = "tee"
HELP = "pause, resume, re-rate or re-point the tee of one or more sidecars (their admin API)"

ACTIONS = ("pause", "resume", "rate", "candidate", "status")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("action", choices=ACTIONS, help="what to do")
    parser.add_argument("value", nargs="?", help="the sample rate (rate) or URL (candidate)")
    parser.add_argument(
        "--admin",
        action="append",
        required=True,
        metavar="URL",
        help="a sidecar's admin base URL, e.g. http://10.0.0.5:9090 (repeat for a fleet)",
    )
    parser.add_argument(
        "--token-file", type=Path, metavar="FILE", help="file holding the admin bearer token"
    )
    parser.add_argument("--by", default=None, metavar="NAME", help="who asks (logged)")
    parser.add_argument(
        "--timeout", type=float, default=5.0, metavar="S", help="per-sidecar timeout (default 5)"
    )


def _plan(args: argparse.Namespace) -> tuple[str, str, dict[str, Any] | None]:
    """The HTTP method, path and JSON body for the action, or a ConfigError."""
    from proxy.control import ControlError, check_candidate_url, check_sample_rate
    from shadowtee.config import ConfigError

    action, value = args.action, args.value
    if action in ("rate", "candidate") and value is None:
        raise ConfigError(f"{action}: a value is required")
    if action not in ("rate", "candidate") and value is not None:
        raise ConfigError(f"{action}: takes no value (got {value!r})")
    body: dict[str, Any] = {} if args.by is None else {"by": args.by}
    try:
        if action == "status":
            return "GET", "/admin/tee", None
        if action == "rate":
            try:
                number = float(value)
            except ValueError:
                msg = f"expected a number within 0..1, got {value!r}"
                raise ControlError("sample_rate", msg) from None
            body["sample_rate"] = check_sample_rate(number)
            return "POST", "/admin/tee/sample-rate", body
        if action == "candidate":
            body["candidate"] = check_candidate_url(value)
            return "POST", "/admin/tee/candidate", body
    except ControlError as exc:
        raise ConfigError(str(exc)) from None
    return "POST", f"/admin/tee/{action}", body


def _summary(view: dict[str, Any]) -> str:
    state = f"paused ({view.get('paused_by')})" if view.get("paused") else "running"
    breaker = view.get("breaker") or {}
    text = f"{state} sample_rate={view.get('sample_rate')} candidate={view.get('candidate')}"
    if breaker.get("enabled"):
        text += f" breaker={breaker.get('state')}"
    return text


async def _call(
    client: Any, base: str, method: str, path: str, body: dict[str, Any] | None
) -> tuple[bool, str]:
    import httpx

    url = base.rstrip("/") + path
    try:
        resp = await client.request(method, url, json=body)
    except httpx.HTTPError as exc:
        return False, f"{type(exc).__name__}: {exc or 'no answer'}"
    try:
        doc = resp.json()
    except ValueError:
        doc = None
    if resp.status_code != 200:
        if resp.status_code in (404, 405):
            why = "no write API (the sidecar has no admin_token configured)"
        elif isinstance(doc, dict) and "error" in doc:
            why = str(doc["error"])
        else:
            why = resp.text[:200].strip()
        return False, f"HTTP {resp.status_code}: {why}"
    if not isinstance(doc, dict):
        return False, "HTTP 200 with an answer that is not a JSON object"
    return True, _summary(doc)


async def _fleet(
    admins: list[str],
    method: str,
    path: str,
    body: dict[str, Any] | None,
    token: str | None,
    timeout_s: float,
) -> list[tuple[str, bool, str]]:
    import httpx

    headers = {"Authorization": f"Bearer {token}"} if token else {}
    async with httpx.AsyncClient(timeout=timeout_s, headers=headers, trust_env=False) as client:
        results = await asyncio.gather(*(_call(client, a, method, path, body) for a in admins))
    return [(a, ok, text) for a, (ok, text) in zip(admins, results, strict=True)]


def run(args: argparse.Namespace) -> int:
    from shadowtee.config import ConfigError

    method, path, body = _plan(args)
    token: str | None = None
    if args.token_file is not None:
        try:
            token = args.token_file.read_text().strip()
        except OSError as exc:
            raise ConfigError(f"--token-file: {exc.strerror or exc}") from None
        if not token:
            raise ConfigError("--token-file: the file is empty")
    elif method == "POST":
        raise ConfigError("--token-file: required to change the tee")
    for admin in args.admin:
        if not admin.startswith(("http://", "https://")):
            raise ConfigError(f"--admin: expected an http(s):// URL, got {admin!r}")
    if args.timeout <= 0:
        raise ConfigError("--timeout: must be positive")
    results = asyncio.run(_fleet(args.admin, method, path, body, token, args.timeout))
    failed = 0
    for admin, ok, text in results:
        print(f"{'ok  ' if ok else 'FAIL'} {admin} {text}")
        failed += not ok
    if failed:
        print(f"shadowtee tee: {failed} of {len(results)} sidecars failed", file=sys.stderr)
        return 1
    return 0
