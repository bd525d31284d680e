"""Storage: the SQL models and their migrations, the batch writer, the reads and retention;
:class:`Store` is the one way in."""

from comparator.store.store import Store

__all__ = ["Store"]
