"""The fleet's own workers. Each package declares itself in one `WORKER = WorkerSpec(...)`, found
through the `fleet.workers` entry points in pyproject.toml (see shared/declaration.py)."""
