"""Traffic for ``shadowtee demo``: the digits test split as OIP v2 requests, sent at a steady rate.

The split is the one ``scripts/make_models.py`` trains with (25%, seed 0, stratified), so every
request is an input none of the models saw in training; ``drive`` cycles through it with a bound
on requests in flight and a progress bar on stderr.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from pathlib import Path
from typing import TextIO

__all__ = ["MODEL_NAME", "Progress", "digits_requests", "drive"]

MODEL_NAME = "digits"


def digits_requests(models: Path) -> tuple[list[bytes], str]:
    """OIP v2 bodies for the digits test split, and where they came from.

    The split is the one ``scripts/make_models.py`` trains with (25%, seed 0, stratified), so the
    demo sends inputs none of the models saw in training. Without scikit-learn the committed
    golden set (the first 100 rows of that split) is used instead.
    """
    try:
        import numpy as np
        from sklearn.datasets import load_digits
        from sklearn.model_selection import train_test_split
    except ImportError:
        path = models / MODEL_NAME / "golden.jsonl"
        lines = [ln for ln in path.read_text(encoding="utf-8").splitlines() if ln.strip()]
        return [ln.encode() for ln in lines], f"{path} ({len(lines)} rows)"
    x, y = load_digits(return_X_y=True)
    _, x_test, _, y_test = train_test_split(
        x.astype(np.float32), y, test_size=0.25, random_state=0, stratify=y
    )
    bodies = [
        json.dumps(
            {
                "id": f"digits-test-{i:03d}",
                "inputs": [
                    {
                        "name": "input",
                        "shape": [1, 64],
                        "datatype": "FP32",
                        "data": [float(v) for v in row],
                    }
                ],
                # the digit's parity: the demo's segment (sent as a header, see parity_headers)
                "parameters": {"parity": "even" if int(label) % 2 == 0 else "odd"},
            },
            separators=(",", ":"),
        ).encode()
        for i, (row, label) in enumerate(zip(x_test, y_test, strict=True))
    ]
    return bodies, f"digits test split ({len(bodies)} rows, cycled)"


class Progress:
    """A one-line progress bar on a terminal; a line per 10% when stderr is a file or pipe."""

    def __init__(self, total: int, stream: TextIO = sys.stderr, width: int = 30) -> None:
        self.total, self.stream, self.width = max(total, 1), stream, width
        self.tty = stream.isatty()
        self.start = time.monotonic()
        self._last = 0.0

    def update(self, done: int) -> None:
        frac = done / self.total
        now = time.monotonic()
        if self.tty:
            if now - self._last < 0.1 and done < self.total:
                return
            filled = int(frac * self.width)
            rate = done / max(now - self.start, 1e-6)
            bar = "#" * filled + "-" * (self.width - filled)
            self.stream.write(f"\r  [{bar}] {done}/{self.total}  {rate:6.0f} req/s")
            if done >= self.total:
                self.stream.write("\n")
        elif int(frac * 10) > int(self._last):
            self.stream.write(f"  sent {done}/{self.total}  ({now - self.start:.1f} s)\n")
        else:
            return
        self._last = now if self.tty else frac * 10
        self.stream.flush()


def parity_headers(bodies: list[bytes]) -> list[dict[str, str]]:
    """The demo's segment header per body: ``X-Digit-Parity`` from the body's
    ``parameters.parity`` (the digits test split has it; the committed golden rows, without
    labels, do not, and get no header)."""
    out = []
    for body in bodies:
        parity = (json.loads(body).get("parameters") or {}).get("parity")
        out.append({"X-Digit-Parity": parity} if isinstance(parity, str) else {})
    return out


async def drive(
    url: str,
    bodies: list[bytes],
    n: int,
    concurrency: int,
    rate: float = 0.0,
    headers: list[dict[str, str]] | None = None,
) -> dict[str, int]:
    """Send ``n`` requests (cycling ``bodies``, each with its ``headers`` when given) to ``url``;
    return counts by response status.

    With ``rate`` > 0, request ``i`` leaves no earlier than ``i / rate`` seconds after the start
    (and at most ``concurrency`` are in flight): steady traffic, as a service sees it. Flat out,
    on a small machine, the two model servers, the proxy and this client fight for the same
    cores, and the latency comparison then measures the scheduler rather than the models.
    """
    import aiohttp

    statuses: dict[str, int] = {}
    progress = Progress(n)
    next_index = 0
    done = 0
    loop = asyncio.get_running_loop()
    start = loop.time()
    timeout = aiohttp.ClientTimeout(total=30)
    async with aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(limit=concurrency), timeout=timeout
    ) as session:

        async def worker() -> None:
            nonlocal next_index, done
            while next_index < n:
                i, next_index = next_index, next_index + 1
                if rate > 0:
                    await asyncio.sleep(max(0.0, start + i / rate - loop.time()))
                try:
                    extra = headers[i % len(headers)] if headers else {}
                    async with session.post(
                        url,
                        data=bodies[i % len(bodies)],
                        headers={"Content-Type": "application/json", **extra},
                    ) as resp:
                        await resp.read()
                        key = str(resp.status)
                except (aiohttp.ClientError, TimeoutError) as exc:
                    key = type(exc).__name__
                statuses[key] = statuses.get(key, 0) + 1
                done += 1
                progress.update(done)

        await asyncio.gather(*(worker() for _ in range(concurrency)))
    return statuses
