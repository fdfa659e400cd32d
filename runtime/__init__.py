"""The file protocol the daemon and the worker share: layout, atomic writes, and the
models of every file they exchange. Standard library and pydantic only (no torch, no
numpy), so the daemon and `orchestrator status` stay light."""
