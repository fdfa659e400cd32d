"""Errors the worker turns into exit codes (see runtime.workerfiles)."""


class BadInput(Exception):
    """Input a retry cannot fix: a missing or damaged token file, a manifest or
    checkpoint that does not match the spec. The message names the file and the fix."""


class NonFiniteLoss(Exception):
    """The loss (or the gradient norm) of an optimizer step was NaN or infinite."""

    def __init__(self, step: int, window_range: tuple[int, int], value: float):
        super().__init__(f"non-finite loss {value} at step {step}, windows {window_range[0]}..{window_range[1]}")
        self.step = step
        self.window_range = window_range
        self.value = value
