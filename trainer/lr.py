"""The worker's learning rate: the curve (runtime.curve) it continues, moved to the plan.

The spec brings the curve the part continues (its starting checkpoint's) and the tokens
the schedule plans after the part; a resumed part takes the curve its checkpoint saved.
The curve's ends are then moved to where the part really ends (this part's exact tokens
plus the plan after it), and again, at a step boundary, whenever the daemon writes a new
plan into lr.json (an append, a removal, a skip): the rate goes on from where it is
(Curve.moved), and the checkpoint records the curve in force, so a resume trains on
exactly that curve.
"""

from __future__ import annotations

from runtime.curve import Curve, CurvePlan, CurveRecord, PlannedAfter, chain_curve, cooling, stage_curve
from runtime.spec import WorkerSpec


class Rate:
    """The factor of the peak rate at each chain token count, for one part or release."""

    def __init__(self, spec: WorkerSpec, step_tokens: int, part_tokens: int, saved: CurveRecord | None, tokens: int):
        """`part_tokens`: the tokens the part trains from its start to its end (exact);
        `saved`: the checkpoint's record (a resume); `tokens`: the chain's count now."""
        self.spec = spec
        self.end_of_part = spec.token_offset + part_tokens
        if saved is not None:
            self.record = saved
        else:
            curve = spec.lr or legacy_curve(spec, step_tokens)
            self.record = CurveRecord(curve=curve, start=curve.at(tokens))
        if spec.lr_after is not None:
            self.move(tokens, spec.lr_after)
        if saved is None:
            self.record.start = self.record.curve.at(tokens)

    @property
    def curve(self) -> Curve:
        return self.record.curve

    def at(self, tokens: int) -> float:
        return self.record.curve.at(tokens)

    def move(self, tokens: int, after: PlannedAfter) -> None:
        """Put the curve's ends where the plan now says, continuous at `tokens` (a spec of an
        earlier release keeps the ends it was written with)."""
        if self.spec.lr_after is None:
            return
        self.record.curve = self.record.curve.moved(tokens, self.plan(after))

    def plan(self, after: PlannedAfter) -> CurvePlan:
        train, fall = self.spec.train, self.record.curve.fall
        if self.spec.release is not None:  # a release ends with itself, at its own floor
            return CurvePlan(end=self.end_of_part, floor=fall.floor if fall else 0.0, fraction=None)
        stage = self.record.curve.stage
        return CurvePlan(
            end=train.total_tokens or self.end_of_part + after.after,
            floor=train.min_lr_ratio,
            fraction=train.decay_fraction if train.lr_schedule == "wsd" else None,
            stage_end=None if after.stage_after is None else self.end_of_part + after.stage_after,
            stage_fraction=stage.fall.fraction if stage and stage.fall else None,
        )


def legacy_curve(spec: WorkerSpec, step_tokens: int) -> Curve:
    """The curve of a spec written by an earlier release (no `lr`): the schedule's over
    chain_total_tokens, the stage's from stage_lr, a release's cooling from the chain's
    factor at its branch, exactly as that release computed them."""
    chain = chain_curve(spec.train, spec.chain_total_tokens, step_tokens)
    s = spec.stage_lr
    if s is not None:
        stage = stage_curve(
            spec.stage, s.start_tokens, s.end_tokens, s.rewarm_tokens, s.decay_fraction, spec.train.min_lr_ratio
        )
        chain = chain.model_copy(update={"stage": stage})
    if spec.release is None:
        return chain
    length = spec.release.windows * spec.model["block_size"]
    return cooling(spec.token_offset, length, chain.at(spec.token_offset), spec.train.min_lr_ratio)
