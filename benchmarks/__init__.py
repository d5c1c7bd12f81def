"""aiozc's benchmarks: ``python -m benchmarks`` (against the peers, one report),
``python -m benchmarks.frames`` (32 KiB framed readers) and
``python -m benchmarks.tune`` (the engine's tunables)."""
