"""The worker process and the library it uses: trains one part of a chain
(`python -m trainer.worker --spec F`). Importing this package does not import torch.

In the order a part flows through them:

    worker       the process: lock, setup, the training loop, how it ended (exit codes)
    stopping     signals and an orphaned worker: when to stop warmly
    workerfiles  the worker's half of runtime/workerfiles.py: control and lr.json in, heartbeat out
    setup        device and precision, model, optimizer, data, where the part starts
    device       device, precision and torch.compile by compute capability
    distributed  several ranks under torchrun (DDP); rank 0 does the file work
    tokenfile    token parts on disk (numpy memmap), checked against their manifest
    data         the deterministic window order and batches drawn from it
    mixture      a part's own windows mixed with replayed ones (replay, the stage's ramp)
    resume       the part's own checkpoint, the chain's, or fresh weights
    loop         Trainer: one optimizer step over micro-batches (no files, no signals)
    optim        AdamW and Muon and their parameter groups
    muon         the Muon optimizer (Newton-Schulz orthogonalised momentum)
    memory       the memory planner: the micro-batch that fits (the one estimate, doctor's too)
    probe        `python -m trainer.probe`: torch, the GPUs, a speed measurement, for doctor
    lr           the learning rate a part trains with: its curve (runtime.curve) moved to the plan
    metrics      throughput, metrics.jsonl, TensorBoard
    Checkpoints, one concern each: runtime/checkpoint.py the folder format and its
    verification (torch-free: the daemon verifies too); here
    checkpoint   the tensors written and read (never pickled objects)
    saver        when the part saves: due, disk space, retries, metadata, pruning
    resume       (above) which checkpoint a part starts from
    disk         free space and a checkpoint's size
    evaluate     validation losses, bits per byte and prompt completions when a part ends
    inference    a checkpoint loaded for generation and scoring (the sample/evaluate/compare commands)
    errors       BadInput (not retryable), NonFiniteLoss
"""
