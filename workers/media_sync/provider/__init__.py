"""The media provider server shipped with fleet: a real HTTP media cloud for the demo, tests and benchmarks.

Run it with `fleet media-provider` or `python -m workers.media_sync.provider`; drive it from Python with
`ProviderProcess` (workers/media_sync/provider/process.py).
"""
