"""What a commit reads before it is made (reads.py): pure."""

from __future__ import annotations

import polaris_celery as pc
from polaris_celery import reads

from .. import scenarios


def test_only_the_commit_that_produces_the_target_reads_the_whole_run() -> None:
    """It settles the run, which reads it all anyway; a branch of a fan-out must not, or each of
    W branches would read what W branches wrote (issue 12: O(1) per commit)."""
    graph = pc.compile_workflow("wide", scenarios.Wide)
    assert reads.commit(graph, 1, "WideJoin").whole
    for i in range(scenarios.WIDE):
        want = reads.commit(graph, 1, f"Wide{i}")
        assert not want.whole and len(want.fields) < 20
