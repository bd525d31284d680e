"""The comparator: ingest API, SQL store, normalisation of outputs, statistics and the verdict."""
