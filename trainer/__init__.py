"""The worker process: trains one part of a chain (`python -m trainer.worker --spec F`).

Importing this package does not import torch; `trainer.tokenfile` is numpy-only so the
data preparation can write token parts without it."""
