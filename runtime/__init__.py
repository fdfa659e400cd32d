"""The file protocol the daemon and the worker share: layout, atomic writes, and the
models of every file they exchange. Standard library and pydantic only (no torch, no
numpy), so the daemon and `orchestrator status` stay light.

    paths        where every file of a run lives
    atomic       durable writes (temp, fsync, rename, fsync dir) and JSON/JSONL reads
    spec         the worker's spec: what to train (schedule -> spec -> worker)
    workerfiles  what daemon and worker exchange in a part's work dir, the exit codes
    curve        the learning-rate curve: the daemon plans it, the worker trains on it
    checkpoint   checkpoint folders: manifest, sidecar, verification (torch-free)
    tokens       the token-part format and its manifest
    chat         the chat format of instruction data
    lockfile     flock-based process locks with the owner's pid and role
    clock        time several processes can compare (monotonic, boot id)
    quarantine   damaged files set aside with a note, never deleted
    faults       fault injection and holds, for tests
    gpuarch      does this torch build run this GPU
    args         command-line values with a range
    errors       UserError: a message and exit 1
    validation   pydantic errors as lines a user can act on
"""
