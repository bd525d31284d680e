"""The on-disk spool: order, bound, restart, and no half-written batch."""

from __future__ import annotations

from pathlib import Path

import pytest

from proxy.exceptions import SpoolError
from proxy.spool import Spool


def test_batches_come_back_in_order_and_survive_a_restart(tmp_path: Path) -> None:
    spool = Spool(tmp_path, max_bytes=1000)
    assert spool.append(b"one\n", 1) and spool.append(b"two\nthree\n", 2)
    (tmp_path / "0000000000000099-1.tmp").write_bytes(b"half")  # a crash mid-write
    again = Spool(tmp_path, max_bytes=1000)
    assert len(again) == 2 and again.pairs == 3 and again.bytes == 14
    assert not list(tmp_path.glob("*.tmp"))
    head = again.oldest()
    assert head is not None and head[1] == b"one\n"
    again.remove(head[0])
    assert again.append(b"four\n", 1)
    order = []
    while (head := again.oldest()) is not None:
        order.append(head[1])
        again.remove(head[0])
    assert order == [b"two\nthree\n", b"four\n"] and again.bytes == 0


def test_spool_refuses_past_its_bound(tmp_path: Path) -> None:
    spool = Spool(tmp_path, max_bytes=10)
    assert spool.append(b"12345678", 1)
    assert not spool.append(b"123", 1)
    assert len(spool) == 1


def test_unusable_directory_is_a_spool_error(tmp_path: Path) -> None:
    blocker = tmp_path / "f"
    blocker.write_text("")
    with pytest.raises(SpoolError, match="spool directory"):
        Spool(blocker / "sub", max_bytes=10)
