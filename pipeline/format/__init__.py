"""The on-disk contract: a run's file names, storage (local or s3://), shards, sidecars and the
manifest. Writers and readers of one format sit side by side; nothing here tokenizes or runs.
"""
