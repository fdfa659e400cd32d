"""The learning-rate contract under edits that move the plan while a part trains: an append
in the decay while the last part runs, and a skip (docs/recipe.md, "The learning-rate curve")."""

from __future__ import annotations

import pytest

from tests.orchestrator.lr_checks import append_stage, edit_case, skip_the_last_part

pytestmark = pytest.mark.slow


@pytest.mark.parametrize(
    "held, change, moves",
    [
        ("more/part-001", append_stage, True),  # in the decay, while the last part trains
        ("more/part-000", skip_the_last_part, True),
    ],
    ids=["append-in-decay", "skip"],
)
def test_an_edit_while_a_part_trains_leaves_the_rate_continuous(tmp_path, held, change, moves):
    """Each edit lands in the chain's decay phase, where the curve drawn over the schedule's
    plan jumped at the next part boundary (or, for a skip, ended above the floor)."""
    edit_case(tmp_path, held, change, moves)
