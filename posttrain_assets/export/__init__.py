"""Stage `export`: `hf_parquet` (+ Hub upload). Pure module: hf_dataset."""
