"""`compact`: a manifest's NDJSON files → one Parquet file in fleet-lake, bad lines quarantined."""
