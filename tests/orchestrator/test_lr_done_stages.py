"""The learning-rate contract under edits of done stages, which must move nothing: more
epochs, a heavier replay, the stage removed (docs/recipe.md, "The learning-rate curve")."""

from __future__ import annotations

import pytest

from tests.orchestrator.lr_checks import (
    edit_case,
    heavier_replay_of_a_done_stage,
    more_epochs_of_a_done_stage,
    remove_a_done_stage,
)

pytestmark = pytest.mark.slow


@pytest.mark.parametrize(
    "held, change, moves",
    [
        ("more/part-000", more_epochs_of_a_done_stage, False),
        ("more/part-000", heavier_replay_of_a_done_stage, False),
        ("more/part-000", remove_a_done_stage, False),
    ],
    ids=["epochs-of-done-stage", "replay-of-done-stage", "remove-done-stage"],
)
def test_an_edit_while_a_part_trains_leaves_the_rate_continuous(tmp_path, held, change, moves):
    """Each edit lands in the chain's decay phase, where the curve drawn over the schedule's
    plan jumped at the next part boundary (or, for a skip, ended above the floor)."""
    edit_case(tmp_path, held, change, moves)
