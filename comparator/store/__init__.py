"""Storage: the SQL models and their migrations, the batch writer, and the reads."""
