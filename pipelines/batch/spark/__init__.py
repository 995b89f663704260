"""Batch scoring on Apache Spark: the same features and model as the local batch, past one
machine (`fraudflow score --engine spark`). Needs the optional `spark` extra (pyspark)."""
