"""A bounded on-disk spool of batches the comparator could not take yet.

One file per batch, named ``<sequence>-<pairs>.json`` so the order and the pair count survive a
restart without reading the files. A batch is written to a temporary name and renamed into place, so
a crash never leaves half a batch that would later be replayed. :meth:`Spool.oldest` hands batches
back in the order they were written; the shipper deletes one only after the comparator took it.

Files are small and written only while the comparator is away, so plain blocking I/O is used.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from proxy.exceptions import SpoolError

__all__ = ["Spool", "SpooledBatch"]

_SUFFIX = ".json"


@dataclass(frozen=True, slots=True)
class SpooledBatch:
    path: Path
    pairs: int
    size: int


class Spool:
    """Spooled batches under ``directory``, at most ``max_bytes`` in all."""

    def __init__(self, directory: str | Path, max_bytes: int) -> None:
        self.directory = Path(directory)
        self.max_bytes = max_bytes
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
            for stale in self.directory.glob("*.tmp"):
                stale.unlink()
            found = sorted(self.directory.glob("*" + _SUFFIX))
        except OSError as exc:
            raise SpoolError(f"spool directory {self.directory}: {exc.strerror or exc}") from exc
        self._batches: list[SpooledBatch] = []
        for path in found:
            seq, _, pairs = path.stem.partition("-")
            if seq.isdigit() and pairs.isdigit():
                self._batches.append(SpooledBatch(path, int(pairs), path.stat().st_size))
        self._next_seq = int(self._batches[-1].path.stem.partition("-")[0]) + 1 if found else 0
        self.bytes = sum(b.size for b in self._batches)

    def __len__(self) -> int:
        return len(self._batches)

    @property
    def pairs(self) -> int:
        return sum(b.pairs for b in self._batches)

    def append(self, payload: bytes, pairs: int) -> bool:
        """Write one batch; ``False`` when it would push the spool past ``max_bytes``."""
        if self.bytes + len(payload) > self.max_bytes:
            return False
        path = self.directory / f"{self._next_seq:016d}-{pairs}{_SUFFIX}"
        tmp = path.with_suffix(".tmp")
        try:
            with open(tmp, "wb") as f:
                f.write(payload)
            os.replace(tmp, path)
        except OSError as exc:
            raise SpoolError(f"cannot write {path}: {exc.strerror or exc}") from exc
        self._next_seq += 1
        self._batches.append(SpooledBatch(path, pairs, len(payload)))
        self.bytes += len(payload)
        return True

    def oldest(self) -> tuple[SpooledBatch, bytes] | None:
        """The first batch still spooled and its bytes, or ``None`` when empty."""
        if not self._batches:
            return None
        batch = self._batches[0]
        try:
            return batch, batch.path.read_bytes()
        except OSError as exc:
            raise SpoolError(f"cannot read {batch.path}: {exc.strerror or exc}") from exc

    def remove(self, batch: SpooledBatch) -> None:
        """Forget ``batch`` after the comparator accepted it."""
        self._batches.remove(batch)
        self.bytes -= batch.size
        batch.path.unlink(missing_ok=True)
