"""The ingest write path of :class:`comparator.store.store.Store`: one validated batch, one transaction.

::

    prepare (CPU, before any lock; Ingest.prepare)
        group the batch by experiment, request ids in order, one pair per id
        measure the pairs (comparator.measure.normalize.measure, vectorised), fold them into hours,
        build their rows — against what this store last saw of the experiment
    write (one transaction; Ingest.write)
        lock the batch's experiments (SELECT … FOR UPDATE by name; insert on first sight, lock again)
        redo what the locked row shows was measured against stale facts (below)
        bulk-load the pairs after a savepoint: COPY on PostgreSQL, executemany on SQLite;
            if one is stored already (a retried batch), roll back to the savepoint and store
            only the missing ones (INSERT … ON CONFLICT DO NOTHING RETURNING; on SQLite a
            lookup of the stored ids, then the insert)
        fold the new pairs into their hours (read-modify-write of the touched hour rows, FOR UPDATE)
        update the experiments' counts

Every writer of an experiment's pairs holds that experiment's row lock (on SQLite, the database's
write lock taken by ``BEGIN IMMEDIATE``) from the lock until commit, so the pairs the primary key
finds stored are exactly those stored before: a retried batch stores and counts nothing twice,
and a concurrent batch that overlaps it waits instead of double-counting. Should the missing ones
be misjudged anyway, their insert fails on the primary key and the whole batch rolls back — never
a silent double. The caller owns the transaction (``Store._write``); everything here runs on the
connection it is given, the statements after the lock on the driver's own connection (SQLAlchemy's
aiosqlite adapter adds its own cost to every statement).

What a batch is measured against — the experiment's id, its stored task (an inferred task holds for
later batches) and its start (which places the warm-up) — can change between prepare and write when
another process writes the same experiment (comparator replicas, ``--workers``). Under the lock the
write compares them with the locked row and measures, folds or builds rows again where they differ,
as it folds again the new pairs of a partly retried batch: each at most once, and only what no
longer holds; the result is always what a single writer would have stored.

The window: a pair dated more than ``max_backdate`` before the experiment's first pair as stored
(the first batch of an experiment sets it) or more than ``max_ahead`` after
the comparator's clock is refused into the quarantine (reasons ``too_old``, ``future``) with the
pairs the caller refused (comparator.ingest.Refused), in the same transaction; so are the new pairs
a proxy had to repair (``Pair.repaired``), reason ``repaired``, though those are stored too. So no pair can move
an experiment's start back by more than ``max_backdate`` (2 h: far less than the 24 h a verdict
waits for) or stand for traffic not seen yet. Checked in :meth:`Ingest.prepare` against what this
store last saw of the experiment, and again under the lock against its stored start.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import partial
from typing import Any

import numpy as np
from sqlalchemy.ext.asyncio import AsyncConnection

from comparator.exceptions import DuplicateKey
from comparator.ingest import Refused
from comparator.measure.aggregates import Aggregate
from comparator.measure.fold import fold
from comparator.measure.normalize import measure
from comparator.store.dialect import (
    EXP,
    EXP_UPDATE,
    HOURS_INSERT,
    HOURS_SELECT,
    HOURS_UPDATE,
    INSERT_MISSING,
    LOCK,
    PAIRS,
    QUARANTINE,
    REQUEST_ID,
    SQLITE_INSERT,
    STORED,
    bind_array,
    bind_stamps,
    driver_call,
    driver_connection,
    executemany,
    fetch,
    read_stamp,
)
from comparator.store.pair_rows import COLUMNS, subset
from comparator.store.prepare import (
    ITEM_CHARS,
    KNOWN_TASKS,
    Assumed,
    BatchPreparation,
    LockedExperiment,
    Part,
    Prepared,
    hour_of,
    json_value,
    safe_text,
    stamps,
)

__all__ = ["Ingest", "IngestResult"]


@dataclass(frozen=True)
class IngestResult:
    """What one batch did: ``inserted`` pairs are new; ``duplicates`` were already stored."""

    received: int
    inserted: int
    duplicates: int
    experiments: tuple[str, ...] = ()
    quarantined: tuple[Refused, ...] = ()
    # New pairs stored that the proxy had to repair (Pair.repaired): also listed in the quarantine.
    repaired: tuple[Refused, ...] = ()


class Ingest(BatchPreparation):
    """The store's ingest settings; :meth:`prepare` measures a batch, :meth:`write` stores it on an
    open write transaction.

    ``sql_dialect`` is the engine's (its bind processors convert pair rows for the driver);
    ``config_for(experiment)`` gives the output reading rules; ``store_bodies`` keeps request and
    response bodies; ``raw_sample_rate`` is the hash fraction of raw pairs kept past retention.

    The split is what lets a busy comparator overlap batches: everything that costs CPU per pair
    (measuring, folding, building rows) runs in :meth:`prepare`, before the write lock, against
    what this store last saw of the experiment. :meth:`write` holds the lock only for SQL, and
    redoes a piece of the preparation only where the locked row says the assumption was wrong
    (another writer started the experiment earlier or fixed its task first, a retried batch).
    """

    async def _locked_rows(
        self, conn: AsyncConnection, names: Sequence[str]
    ) -> dict[str, LockedExperiment]:
        """``SELECT … FOR UPDATE`` of the named experiments (in name order: no deadlock); on
        SQLite the write transaction holds the lock already."""
        rows = await fetch(conn, LOCK, bind_array(self.dialect, names), what="experiment lock")
        read = partial(read_stamp, self.dialect)
        return {
            r[1]: LockedExperiment(r[0], read(r[2]), read(r[3]), r[4], r[5], r[6]) for r in rows
        }

    async def _lock_experiments(
        self, conn: AsyncConnection, parts: Sequence[Part]
    ) -> dict[str, LockedExperiment]:
        """Lock every named row, inserting unseen experiments first."""
        names = [part.name for part in parts]  # sorted by prepare
        locked = await self._locked_rows(conn, names)
        if len(locked) == len(names):
            return locked
        now = datetime.now(UTC)
        rows = []
        for part in parts:
            if part.name in locked:
                continue
            p = part.first
            cfg = self.config_for(part.name)
            rows.append(
                {
                    "name": part.name,
                    "started_at": part.earliest,
                    "last_pair_at": None,
                    "prod_version": p.prod.model_version,
                    "cand_version": p.candidate.model_version,
                    "task": cfg.task if cfg.task in KNOWN_TASKS else None,
                    "n_pairs": 0,
                    "config": dataclasses.asdict(cfg),
                    "created_at": now,
                }
            )
        await conn.execute(self._insert(EXP).on_conflict_do_nothing(index_elements=["name"]), rows)
        return await self._locked_rows(conn, names)

    async def write(self, conn: AsyncConnection, prepared: Prepared) -> IngestResult:
        """Store a prepared batch on ``conn``; pairs already stored are skipped, uncounted."""
        inserted = 0
        refused = list(prepared.refused)
        repaired: list[Refused] = []
        exps = await self._lock_experiments(conn, prepared.parts) if prepared.parts else {}
        for part in prepared.parts:
            exp = exps[part.name]
            batch, times, metrics = part.pairs, part.times, part.metrics
            assumed = part.assumed
            hours: dict[datetime, Aggregate] | None = part.hours
            records = part.records
            floor = exp.started_at - self.max_backdate
            shrunk = part.earliest < floor  # another writer stored the experiment's first pairs
            if shrunk:
                group = {p.request_id: p for p in batch}
                kept = self._in_window(group, exp.started_at, self.clock(), prepared.index, refused)
                batch = list(kept.values())
                if not batch:
                    continue
                times = stamps(batch)
                part = dataclasses.replace(
                    part, pairs=batch, times=times, earliest=batch[int(np.argmin(times))].ts
                )
            started = min(exp.started_at, part.earliest)
            actual = Assumed(exp.id, self._config(part.name, exp.task), started)
            if shrunk or actual.config != assumed.config:  # or another writer fixed the task first
                # measured again; the rows and the hours follow from these metrics below
                metrics, hours, records = measure(batch, actual.config), None, None
            if records is None or exp.id != assumed.experiment_id:
                records = self._records(exp.id, batch, metrics)
            new_ids = await self._insert_pairs(conn, exp.id, records)
            new_pairs = batch
            if new_ids is not None:  # some were stored already: fold only the new ones
                idx = [i for i, p in enumerate(batch) if p.request_id in new_ids]
                new_pairs, metrics = [batch[i] for i in idx], subset(metrics, idx)
                times = times[idx]
            if new_pairs:
                if hours is None or new_ids is not None or started != assumed.started_at:
                    hours = fold(
                        new_pairs,
                        metrics,
                        experiment_start=started,
                        config=actual.config,
                        stamps=times,
                    )
                await self.merge_hours(conn, exp.id, hours)
            inserted += len(new_pairs)
            repaired += [
                Refused(
                    prepared.index.get(id(p), -1),
                    "repaired",
                    "stored; repaired by the proxy: " + ", ".join(p.repaired),
                    p.model_dump(mode="json"),
                    p.experiment,
                    p.request_id,
                )
                for p in new_pairs
                if p.repaired
            ]
            task = exp.task or (metrics.task if metrics.task in KNOWN_TASKS else None)
            last = new_pairs[int(np.argmax(times))].ts if new_pairs else None
            await self._update_experiment(
                conn,
                exp.id,
                added=len(new_pairs),
                started_at=started,
                last_pair_at=max(filter(None, (exp.last_pair_at, last)), default=None),
                task=task,
                prod_version=exp.prod_version or part.first.prod.model_version,
                cand_version=exp.cand_version or part.first.candidate.model_version,
            )
            self._seen[part.name] = (exp.id, task, started)
        if refused or repaired:
            await self._quarantine(conn, refused + repaired)
        names = tuple(part.name for part in prepared.parts)
        refused.sort(key=lambda r: r.index)
        duplicates = prepared.received - inserted - len(refused)
        return IngestResult(
            prepared.received, inserted, duplicates, names, tuple(refused), tuple(repaired)
        )

    async def _quarantine(self, conn: AsyncConnection, refused: Sequence[Refused]) -> None:
        """Keep the refused pairs with their reasons (see comparator.store.models.QuarantineRow)."""
        now = datetime.now(UTC)
        rows = [
            {
                "experiment": r.experiment,
                "request_id": r.request_id,
                "reason": r.reason,
                "detail": safe_text(r.detail),
                "item": json.dumps(r.item, ensure_ascii=True, default=repr)[:ITEM_CHARS],
                "received_at": now,
            }
            for r in refused
        ]
        await conn.execute(QUARANTINE.insert(), rows)

    async def _stored_ids(
        self, conn: AsyncConnection, experiment_id: int, request_ids: Sequence[str]
    ) -> set[str]:
        """The ids among ``request_ids`` already stored for the experiment (exact under its lock).

        The ids travel as one parameter — an array on PostgreSQL, a JSON array read by
        ``json_each`` on SQLite — so the statement neither grows with the batch nor meets
        SQLite's limit on bound variables. Sent on the driver's connection, inside the open
        transaction: the values are plain strings, and SQLAlchemy's aiosqlite adapter spends four
        thread hand-offs on a query that aiosqlite runs in one.
        """
        ids = bind_array(self.dialect, request_ids)
        return {r[0] for r in await fetch(conn, STORED, experiment_id, ids, what="id lookup")}

    async def _insert_pairs(
        self, conn: AsyncConnection, experiment_id: int, records: list[tuple[Any, ...]]
    ) -> set[str] | None:
        """Store the rows of pairs not stored yet: None when every one was new, else the request
        ids of those that were (the rest were stored already, a retried batch).

        The common case, a batch of new pairs, is one bulk load: COPY (PostgreSQL) or one
        executemany (SQLite), on the driver's connection inside the transaction SQLAlchemy holds
        on it, after a savepoint. Both skip SQL compilation and per-row parameter handling, the
        bulk of the client-side cost of a 500-pair batch (the rows were converted column-wise by
        :func:`pair_records`). A row already stored fails the load on the primary key; the load is
        rolled back to the savepoint and done again as :meth:`_insert_missing`.

        There is no lookup of stored ids ahead of the load: under the experiment's lock nothing
        else can store one of its pairs, so the primary key is the exact check, and the cheapest.
        A lookup on PostgreSQL costs more than the load, and its plan follows the table's
        statistics: for an experiment newer than the last ANALYZE it scans every pair of the
        experiment, per batch.
        """
        raw = await driver_connection(conn)
        what = f"bulk load of {len(records)} pairs"
        # Never released: a savepoint ends with its transaction, and a RELEASE is a round trip.
        await driver_call(raw.execute("SAVEPOINT pairs_load"), what)
        try:
            if self.dialect == "postgresql":  # asyncpg's binary COPY
                load = raw.copy_records_to_table(PAIRS.name, records=records, columns=COLUMNS)
            else:
                load = raw.executemany(SQLITE_INSERT, records)
            await driver_call(load, what)
            return None
        except DuplicateKey:
            pass  # on the primary key, the pairs' only unique index
        await driver_call(raw.execute("ROLLBACK TO SAVEPOINT pairs_load"), what)
        return await self._insert_missing(conn, experiment_id, records)

    async def _insert_missing(
        self, conn: AsyncConnection, experiment_id: int, records: list[tuple[Any, ...]]
    ) -> set[str]:
        """Store the rows whose pairs are not stored yet; the request ids of those stored.

        PostgreSQL: one ``INSERT … SELECT FROM unnest(…) ON CONFLICT DO NOTHING RETURNING``, each
        column one array parameter, which the primary key checks row by row whatever the
        statistics. SQLite: the stored ids looked up (its planner takes the primary key for an
        equality on both of its columns), then one executemany of the rest.
        """
        what = f"insert of {len(records)} pairs, some stored already"
        if self.dialect == "postgresql":
            columns = [list(c) for c in zip(*records, strict=True)]
            rows = await fetch(conn, INSERT_MISSING, *columns, what=what)
            return {r[0] for r in rows}
        stored = await self._stored_ids(conn, experiment_id, [r[REQUEST_ID] for r in records])
        missing = [r for r in records if r[REQUEST_ID] not in stored]
        if missing:
            await executemany(conn, INSERT_MISSING, missing, what)
        return {r[REQUEST_ID] for r in missing}

    async def merge_hours(
        self, conn: AsyncConnection, experiment_id: int, hours: Mapping[datetime, Aggregate]
    ) -> None:
        """Merge ``hours`` into the stored hourly rows: one locked read of the touched hours, the
        merge in memory, one bulk update and, for hours not stored yet, one bulk insert.

        The caller holds the experiment's lock (see the module docstring), so no other writer can
        insert one of those hours in between; if one did, the insert fails on the primary key
        rather than lose counts. On the driver's connection: three statements per batch.
        """
        now = datetime.now(UTC)
        merged: dict[datetime, Aggregate] = {}
        for h, agg in hours.items():
            merged.setdefault(hour_of(h), Aggregate()).merge(agg)
        keys = sorted(merged)
        # Each hour as bound and as read back (the same datetime on PostgreSQL, text on SQLite).
        bound = dict(zip(bind_stamps(self.dialect, keys), keys, strict=True))
        rows = await fetch(
            conn,
            HOURS_SELECT,
            experiment_id,
            bind_array(self.dialect, list(bound)),
            what="hourly aggregates read",
        )
        stored = {bound[r[0]]: Aggregate.from_json(json_value(r[1])) for r in rows}
        (stamp_now,) = bind_stamps(self.dialect, [now])
        fresh = [
            (experiment_id, b, json.dumps(merged[h].to_json()), stamp_now)
            for b, h in bound.items()
            if h not in stored
        ]
        changed = [
            (json.dumps(stored[h].merge(merged[h]).to_json()), stamp_now, experiment_id, b)
            for b, h in bound.items()
            if h in stored
        ]
        if fresh:
            await executemany(conn, HOURS_INSERT, fresh, "hourly aggregates insert")
        if changed:
            await executemany(conn, HOURS_UPDATE, changed, "hourly aggregates update")

    async def _update_experiment(
        self,
        conn: AsyncConnection,
        experiment_id: int,
        *,
        added: int,
        started_at: datetime,
        last_pair_at: datetime | None,
        task: str | None,
        prod_version: str | None,
        cand_version: str | None,
    ) -> None:
        """The experiment's count, span, task and versions after a batch (one statement)."""
        started, last = bind_stamps(self.dialect, [started_at, last_pair_at])
        row = (added, started, last, task, prod_version, cand_version, experiment_id)
        await executemany(conn, EXP_UPDATE, [row], "experiment update")
