"""The worker process and the library it uses: trains one part of a chain
(`python -m trainer.worker --spec F`). Importing this package does not import torch.

In the order a part flows through them:

    worker       the process: lock, setup, the training loop, how it ended (exit codes)
    stopping     signals and an orphaned worker: when to stop warmly
    protocol     the worker's half of the file protocol: control in, heartbeat out, phase
    setup        device and precision, model, optimizer, data, where the part starts
    device       device, precision and torch.compile by compute capability
    distributed  several ranks under torchrun (DDP); rank 0 does the file work
    tokenfile    token parts on disk (numpy memmap), checked against their manifest
    data         the deterministic window order and batches drawn from it
    mixture      a part's own windows mixed with replayed ones (replay, the stage's ramp)
    resume       the part's own checkpoint, the chain's, or fresh weights
    loop         Trainer: one optimizer step over micro-batches (no files, no signals)
    optim        AdamW and its parameter groups
    lr           the learning rate a part trains with: its curve (runtime.curve) moved to the plan
    metrics      throughput, metrics.jsonl, TensorBoard
    saver        periodic and final checkpoints: disk space, retries, metadata, pruning
    checkpoint   checkpoint folders written and read (tensors only, never pickled objects)
    disk         free space and a checkpoint's size
    evaluate     validation losses and prompt completions when a part ends
    inference    a checkpoint loaded for generation and scoring (the sample/evaluate/compare commands)
    errors       BadInput (not retryable), NonFiniteLoss
"""
