"""`ingest`: S3 notifications → tracked files → manifests of up to 200 files, handed to `compact`."""
