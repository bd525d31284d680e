"""Storage: the SQL models and their migrations, the batch writer, the reads and retention;
:class:`comparator.store.store.Store` is the one way in."""
