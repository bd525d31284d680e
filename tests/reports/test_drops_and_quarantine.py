"""The report shows the pairs that never made it: dropped by the proxies (by reason) and refused by
the comparator into its quarantine (by reason)."""

from __future__ import annotations

import json
from pathlib import Path

from comparator.ingest import screen_items
from comparator.store.store import Store
from reports import write_report

from .conftest import DAY
from .gen import make_pairs

EXPERIMENT = "drops-and-quarantine"


async def test_drops_and_the_quarantine_are_in_the_json_and_the_html(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/db.sqlite"
    pairs = make_pairs(DAY, per_hour=4, hours=6, experiment=EXPERIMENT)
    items = [p.model_dump(mode="json") for p in pairs]
    items[3]["route"] = "/v2/models/a\x00b/infer"
    items[5]["prod"]["status"] = 999
    items[6]["candidate"]["model_version"] = "\x00"
    screened = screen_items(items)
    assert len(screened.refused) == 3
    store = await Store.open(url)
    try:
        result = await store.ingest(screened.pairs, screened.refused, screened.indexes)
        assert (result.inserted, len(result.quarantined)) == (21, 3)
        assert await store.record_drops(EXPERIMENT, "p1", {"spool_write_error": 4, "rejected": 2})
        paths = await write_report(store, EXPERIMENT, DAY, tmp_path / "out")
    finally:
        await store.close()
    traffic = json.loads(paths.json.read_text(encoding="utf-8"))["traffic"]
    assert traffic["pairs"] == 21
    assert traffic["quarantined"] == 3
    assert traffic["quarantined_by_reason"] == {"invalid": 1, "unstorable_text": 2}
    assert traffic["spool_drops"] == 6
    assert "rejected 2, spool_write_error 4" in traffic["spool_drops_note"]
    html = paths.html.read_text(encoding="utf-8")
    assert "pairs quarantined" in html
    assert "kept in its quarantine: invalid 1, unstorable_text 2" in html
