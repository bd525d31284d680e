"""The on-disk spool: order, bound, restart, no half-written batch, and faults counted, not fatal."""

from __future__ import annotations

import errno
import os
from pathlib import Path
from typing import Any

import pytest

from proxy import spool as spool_module
from proxy.exceptions import SpoolError
from proxy.spool import Spool

ONE = b'{"pairs":[1]}'
TWO = b'{"pairs":[2,3]}'


def test_batches_come_back_in_order_and_survive_a_restart(tmp_path: Path) -> None:
    spool = Spool(tmp_path, max_bytes=1000)
    assert spool.append(ONE, 1) == "ok" and spool.append(TWO, 2) == "ok"
    (tmp_path / "0000000000000099-1.tmp").write_bytes(b"half")  # a crash mid-write
    again = Spool(tmp_path, max_bytes=1000)
    assert len(again) == 2 and again.pairs == 3 and again.bytes == len(ONE) + len(TWO)
    assert not list(tmp_path.glob("*.tmp")) and again.set_aside_files == 0
    head = again.oldest()
    assert head is not None and head[1] == ONE
    again.remove(head[0])
    assert again.append(b'{"pairs":[4]}', 1) == "ok"
    order = []
    while (head := again.oldest()) is not None:
        order.append(head[1])
        again.remove(head[0])
    assert order == [TWO, b'{"pairs":[4]}'] and again.bytes == 0


def test_spool_refuses_past_its_bound(tmp_path: Path) -> None:
    spool = Spool(tmp_path, max_bytes=20)
    assert spool.append(ONE, 1) == "ok"
    assert spool.append(TWO, 2) == "full"
    assert len(spool) == 1


def test_an_unusable_directory_is_a_spool_error_at_start(tmp_path: Path) -> None:
    blocker = tmp_path / "f"
    blocker.write_text("")
    with pytest.raises(SpoolError, match="spool directory"):
        Spool(blocker / "sub", max_bytes=1000)


def test_stray_and_unreadable_files_are_moved_aside_at_start_up(tmp_path: Path) -> None:
    spool = Spool(tmp_path, max_bytes=1000)
    assert spool.append(ONE, 1) == "ok"
    (tmp_path / "notes.json").write_text("{}")  # a stray *.json
    (tmp_path / "0000000000000007-3.json").write_bytes(b"garbage")  # not a batch
    (tmp_path / "0000000000000008-x.json").write_bytes(TWO)  # a name that is not ours
    again = Spool(tmp_path, max_bytes=1000)
    assert (len(again), again.pairs, again.set_aside_files) == (1, 1, 3)
    aside = sorted(p.name for p in (tmp_path / "rejected").iterdir())
    assert aside == [
        "stray-0000000000000007-3.json",
        "stray-0000000000000008-x.json",
        "stray-notes.json",
    ]
    assert again.append(TWO, 2) == "ok"  # goes on after the batch it kept
    assert [b.pairs for b in again.batches] == [1, 2]


def test_a_write_error_is_reported_and_leaves_nothing_behind(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    spool = Spool(tmp_path, max_bytes=1000)
    real_open = open

    class FullDisk:
        def __init__(self, f: Any) -> None:
            self._f = f

        def __enter__(self) -> FullDisk:
            return self

        def __exit__(self, *exc: object) -> None:
            self._f.close()

        def write(self, data: bytes) -> int:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(spool_module, "open", lambda p, m: FullDisk(real_open(p, m)), raising=False)
    assert spool.append(ONE, 1) == "write_error"
    monkeypatch.undo()
    assert (len(spool), spool.bytes, spool.write_errors) == (0, 0, 1)
    assert not [p for p in tmp_path.iterdir() if p.is_file()]
    assert spool.append(ONE, 1) == "ok"  # the disk has room again: spooling goes on


def test_an_unreadable_batch_reads_as_none_and_is_set_aside(tmp_path: Path) -> None:
    spool = Spool(tmp_path, max_bytes=1000)
    assert spool.append(ONE, 1) == "ok" and spool.append(TWO, 2) == "ok"
    first = spool.batches[0]
    first.path.unlink()  # gone from under the spool
    head = spool.oldest()
    assert head is not None and head[1] is None
    spool.set_aside(head[0])
    assert (len(spool), spool.pairs) == (1, 2)


def test_rejected_batches_are_kept_up_to_an_eighth_of_the_bound(tmp_path: Path) -> None:
    spool = Spool(tmp_path, max_bytes=8 * 40)
    spool.keep_rejected(b"x" * 30, 1)
    spool.keep_rejected(b"y" * 30, 1)  # past 40 bytes: deleted, not kept
    assert [p.read_bytes() for p in (tmp_path / "rejected").iterdir()] == [b"x" * 30]


def test_batches_kept_aside_by_an_earlier_process_are_never_overwritten(tmp_path: Path) -> None:
    """A process that starts with an empty spool numbers its batches after the ones kept in
    ``rejected/`` by earlier processes: before, it began again at 0 and its first rejected batch
    took the place (and the name) of the earlier one, counted twice in ``rejected_bytes``."""
    first = Spool(tmp_path, max_bytes=8 * 1000)
    first.keep_rejected(ONE, 1)
    assert first.append(TWO, 2) == "ok"
    head = first.oldest()
    assert head is not None
    first.set_aside(head[0])  # refused for good: moved aside under its own name
    (tmp_path / "notes.json").write_text("{}")  # a stray file, moved aside at start-up
    second = Spool(tmp_path, max_bytes=8 * 1000)
    second.keep_rejected(b'{"pairs":[9]}', 1)
    assert second.append(ONE, 1) == "ok"
    head = second.oldest()
    assert head is not None
    second.set_aside(head[0])
    (tmp_path / "notes.json").write_text("{}")  # the same stray name again
    third = Spool(tmp_path, max_bytes=8 * 1000)
    kept = sorted((tmp_path / "rejected").iterdir())
    assert len(kept) == 6, [p.name for p in kept]  # 2 x (kept, set aside, stray): none lost
    assert third.rejected_bytes == sum(p.stat().st_size for p in kept)
    assert sorted(p.read_bytes() for p in kept).count(b"{}") == 2
