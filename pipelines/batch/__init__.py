"""Batch scoring: the local engine on every core (`local`: chunked input, streaming features,
the compiled scorer) and the same on Apache Spark (`spark/`)."""
