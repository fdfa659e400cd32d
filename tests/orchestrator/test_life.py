"""The job state machine (orchestrator/part/life.py): every pair of (status, event) is
either the table's move or refused; and no other module sets a job's status."""

from __future__ import annotations

import inspect
import re

import pytest

from orchestrator.chain.state import PartState, PartStatus, ReleaseState
from orchestrator.commands import fsck
from orchestrator.daemon import requests
from orchestrator.part import life, lineage, runner, settle
from tests.helpers import REPO

EXPECTED = {
    "start": ({"pending"}, "running"),
    "adopt": ({"pending", "running"}, "running"),
    "done": ({"running", "pending", "skipped"}, "done"),
    "requeue": ({"running", "pending"}, "pending"),
    "fail": ({"running", "pending"}, "failed"),
    "skip": ({"pending", "running", "failed"}, "skipped"),
    "retry": ({"failed", "skipped"}, "pending"),
    "retrain": ({"done"}, "pending"),
}


def jobs(status: PartStatus):
    part = PartState(id="wiki/part-000", stage="wiki", file="f", sha256="s", status=status)
    rel = ReleaseState(name="0001-wiki-part-000", part="wiki/part-000", stage="wiki", branch="b", branch_tokens=1,
                       decay_tokens=1, status=status)  # fmt: skip
    return part, rel


@pytest.mark.parametrize("event", sorted(EXPECTED))
@pytest.mark.parametrize("status", list(PartStatus))
def test_every_status_and_event_moves_as_the_table_says_or_is_refused(status, event):
    sources, target = EXPECTED[event]
    for job in jobs(status):
        if status.value in sources:
            life.move(job, event)
            assert job.status == PartStatus(target)
        else:
            with pytest.raises(life.IllegalMove, match=event):
                life.move(job, event)
            assert job.status == status


def test_the_table_is_the_one_tested():
    assert {e: ({s.value for s in src}, dst.value) for e, (src, dst) in life.MOVES.items()} == EXPECTED


def test_no_other_module_sets_a_jobs_status():
    setters = []
    for path in (REPO / "orchestrator").rglob("*.py"):
        if path.name == "life.py":
            continue
        for n, line in enumerate(path.read_text().splitlines(), 1):
            target = re.match(r"^\s*([\w.\[\], ]+?)\s*=[^=]", line)  # an assignment's targets
            if (target and re.search(r"\.status\b", target.group(1))) or re.search(r"\bstatus=PartStatus\.", line):
                setters.append(f"{path.relative_to(REPO)}:{n}: {line.strip()}")
    allowed = ("status=PartStatus.DONE,", '"status": PartStatus.SKIPPED')  # records built again from folders
    assert [s for s in setters if not any(a in s for a in allowed)] == []


def test_architecture_md_draws_the_table_the_code_has():
    text = (REPO / "docs" / "architecture.md").read_text()
    table = text[text.index("| event | from | to | who may |") :].split("\n\n")[0]
    rows = re.findall(r"^\| (\w+) \| ([a-z, ]+) \| (\w+) \|", table, re.M)[1:]
    drawn = {event: ({s.strip() for s in sources.split(",")}, target) for event, sources, target in rows}
    assert drawn == EXPECTED
    # The "who may" column names functions: each must exist and make that move.
    owners = {
        "PartRunner": runner.PartRunner,
        "settle": settle,
        "requests": requests,
        "lineage": lineage,
        "Check": fsck.Check,
    }
    named = 0
    for row in table.splitlines()[2:]:
        event = row.split("|")[1].strip()
        for owner, name in re.findall(r"`(\w+)\.(\w+)`", row.split("|")[4]):
            source = inspect.getsource(getattr(owners[owner], name))
            assert re.search(rf'life\.move\(\w+, [^)]*"{event}"', source), f"{owner}.{name} does not {event}"
            named += 1
    assert named >= 12
