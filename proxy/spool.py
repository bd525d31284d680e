"""A bounded on-disk spool of batches the comparator could not take yet.

One file per batch, named ``<sequence>-<pairs>.json`` so the order and the pair count survive a
restart without reading the files. A batch is written to a temporary name and renamed into place, so
a crash never leaves half a batch that would later be replayed. :meth:`Spool.oldest` hands batches
back in the order they were written; the shipper deletes one only after the comparator took it.

Faults are counted, never fatal (the sidecar must not restart-loop over its spool); only a
directory that cannot be made at all stops the start, with one line (:class:`SpoolError`):

* a write that fails (``ENOSPC``, a read-only volume) returns ``"write_error"``, and the shipper
  counts the batch's pairs as dropped with that reason;
* at start-up, a file that is not a batch of this spool (a stray ``*.json``, a name that is not
  ``<sequence>-<pairs>.json``, an unreadable file or one that does not start like a batch) is moved
  aside into ``rejected/`` and counted in :attr:`Spool.set_aside_files`; a spooled batch that cannot
  be read later goes the same way (:meth:`Spool.set_aside`);
* batches the comparator refused for good are kept in ``rejected/`` for inspection too
  (:meth:`Spool.keep_rejected`), at most ``max_bytes // 8`` of them in all: past that they are
  deleted (their pairs are counted as dropped either way). So the spool's volume needs
  ``max_bytes`` × 1.125 plus one batch being written: size it 25 % above ``max_bytes``.

Files are small and written only while the comparator is away, so plain blocking I/O is used.
"""

from __future__ import annotations

import logging
import os
import re
from dataclasses import dataclass
from pathlib import Path

from proxy.exceptions import SpoolError

__all__ = ["REJECTED_DIR", "Spool", "SpooledBatch"]

log = logging.getLogger("shadowtee.proxy.spool")

_SUFFIX = ".json"
_NAME = re.compile(r"^(\d{16})-(\d{1,9})\.json$")
_HEAD = b'{"pairs":['
REJECTED_DIR = "rejected"


@dataclass(frozen=True, slots=True)
class SpooledBatch:
    path: Path
    pairs: int
    size: int


class Spool:
    """Spooled batches under ``directory``, at most ``max_bytes`` in all."""

    def __init__(self, directory: str | Path, max_bytes: int) -> None:
        self.directory = Path(directory)
        self.rejected_dir = self.directory / REJECTED_DIR
        self.max_bytes = max_bytes
        self.max_rejected_bytes = max_bytes // 8
        self.set_aside_files = 0  # files moved into rejected/ (stray, unreadable)
        self.write_errors = 0
        self._batches: list[SpooledBatch] = []
        self._next_seq = 0
        self.bytes = 0
        self.rejected_bytes = 0
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
            self.rejected_dir.mkdir(exist_ok=True)
            entries = sorted(self.directory.iterdir())
            kept = [p for p in self.rejected_dir.iterdir() if p.is_file()]
            self.rejected_bytes = sum(p.stat().st_size for p in kept)
        except OSError as exc:
            # A spool directory that cannot be made is a configuration error: one line at start.
            raise SpoolError(f"spool directory {self.directory}: {exc.strerror or exc}") from exc
        # Numbers go on from the highest in rejected/ too, so that a batch kept there by this
        # process never takes the name (and the place) of one an earlier process kept.
        for path in kept:
            if (m := _NAME.match(path.name)) is not None:
                self._next_seq = max(self._next_seq, int(m.group(1)) + 1)
        for path in entries:
            if path.name == REJECTED_DIR:
                continue
            if path.suffix == ".tmp":
                self._unlink(path)
                continue
            m = _NAME.match(path.name)
            batch = None
            if m is not None:
                try:
                    with open(path, "rb") as f:
                        head = f.read(len(_HEAD))
                    if head == _HEAD:
                        batch = SpooledBatch(path, int(m.group(2)), path.stat().st_size)
                        self._next_seq = max(self._next_seq, int(m.group(1)) + 1)
                except OSError:
                    batch = None
            if batch is None:
                try:
                    size = path.stat().st_size if path.is_file() else 0
                except OSError:
                    size = 0
                if self._move_aside(path, "stray-"):
                    self.rejected_bytes += size
                self.set_aside_files += 1
                continue
            self._batches.append(batch)
        self.bytes = sum(b.size for b in self._batches)
        if self.set_aside_files:
            log.warning(
                "spool: moved %d files that are not readable batches into %s",
                self.set_aside_files,
                self.rejected_dir,
            )

    def __len__(self) -> int:
        return len(self._batches)

    @property
    def pairs(self) -> int:
        return sum(b.pairs for b in self._batches)

    @property
    def batches(self) -> tuple[SpooledBatch, ...]:
        return tuple(self._batches)

    def append(self, payload: bytes, pairs: int) -> str:
        """Write one batch: ``"ok"``, ``"full"`` (past ``max_bytes``) or ``"write_error"``."""
        if self.bytes + len(payload) > self.max_bytes:
            return "full"
        path = self.directory / f"{self._next_seq:016d}-{pairs}{_SUFFIX}"
        tmp = path.with_suffix(".tmp")
        try:
            with open(tmp, "wb") as f:
                f.write(payload)
            os.replace(tmp, path)
        except OSError as exc:
            self.write_errors += 1
            log.error("spool: cannot write %s: %s", path, exc.strerror or exc)
            self._unlink(tmp)
            return "write_error"
        self._next_seq += 1
        self._batches.append(SpooledBatch(path, pairs, len(payload)))
        self.bytes += len(payload)
        return "ok"

    def read(self, batch: SpooledBatch) -> bytes | None:
        """The bytes of a spooled batch, or ``None`` when it cannot be read (set it aside)."""
        try:
            return batch.path.read_bytes()
        except OSError as exc:
            log.error("spool: cannot read %s: %s", batch.path, exc.strerror or exc)
            return None

    def oldest(self) -> tuple[SpooledBatch, bytes | None] | None:
        """The first batch still spooled and its bytes (``None``: unreadable), or ``None``."""
        if not self._batches:
            return None
        batch = self._batches[0]
        return batch, self.read(batch)

    def remove(self, batch: SpooledBatch) -> None:
        """Forget ``batch`` after the comparator accepted it."""
        self._forget(batch)
        self._unlink(batch.path)

    def set_aside(self, batch: SpooledBatch) -> None:
        """Move ``batch`` out of the queue into ``rejected/`` (kept for inspection)."""
        self._forget(batch)
        if self.rejected_bytes + batch.size <= self.max_rejected_bytes and self._move_aside(
            batch.path, ""
        ):
            self.rejected_bytes += batch.size
        else:
            self._unlink(batch.path)

    def keep_rejected(self, payload: bytes, pairs: int) -> None:
        """Keep a batch the comparator refused for good in ``rejected/``, while there is room."""
        if self.rejected_bytes + len(payload) > self.max_rejected_bytes:
            return
        path = self.rejected_dir / f"{self._next_seq:016d}-{pairs}{_SUFFIX}"
        self._next_seq += 1
        try:
            path.write_bytes(payload)
        except OSError as exc:
            log.error("spool: cannot keep a rejected batch in %s: %s", path, exc.strerror or exc)
            self._unlink(path)
            return
        self.rejected_bytes += len(payload)

    def _forget(self, batch: SpooledBatch) -> None:
        if batch in self._batches:
            self._batches.remove(batch)
            self.bytes -= batch.size

    def _move_aside(self, path: Path, prefix: str) -> bool:
        target = self.rejected_dir / f"{prefix}{path.name}"
        for n in range(1, 1000):  # never over a file kept there before (bounded)
            if not target.exists():
                break
            target = self.rejected_dir / f"{prefix}{n}-{path.name}"
        try:
            os.replace(path, target)
            return True
        except OSError as exc:
            log.error("spool: cannot move %s aside: %s", path, exc.strerror or exc)
            self._unlink(path)
            return False

    @staticmethod
    def _unlink(path: Path) -> None:
        try:
            path.unlink(missing_ok=True)
        except OSError as exc:
            log.error("spool: cannot delete %s: %s", path, exc.strerror or exc)
