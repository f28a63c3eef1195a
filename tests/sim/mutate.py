"""Check the checker: re-introduce one fixed bug of issue 10 in a scratch copy, so that the
simulator can be shown to find it.

    git clone -q . /tmp/m && .venv/bin/python tests/sim/mutate.py c03 /tmp/m
    cd /tmp/m && PYTHONPATH=/tmp/m /path/to/.venv/bin/python -m tests.sim --seeds 2000 -j 2

Each name is a case of the issue (c06b and c07b are finer-grained variants); every mutation is
an exact text replacement that must match once.
"""

from __future__ import annotations

import pathlib
import sys

M = {}
def rep(path, old, new):
    return (path, old, new)
M["c01"] = [rep("polaris_celery/coordinator.py",
    'inc = snap.inc if snap.exists else self.ids()',
    'inc = snap.inc if snap.exists else ""  # MUTATION c01')]
M["c01b"] = [rep("polaris_celery/stores/begin.lua",
    "if (redis.call('HGET', KEYS[1], 'inc') or '') ~= ARGV[5] then return {'gone'} end\n",
    "-- MUTATION c01b: no incarnation check\n")]
M["c02"] = [rep("polaris_celery/machine.py",
    """            for key in k.lasting:
                ops.add("PERSIST", key)""",
    """            pass  # MUTATION c02: no PERSIST on re-open""")]
M["c03"] = [rep("polaris_celery/stores/cas.lua",
    "    if op[1] == 'ONCE' and redis.call('HGET', op[2], op[3][1]) == op[3][2] then",
    "    if false then -- MUTATION c03: ONCE never matches")]
M["c04"] = [rep("polaris_celery/lifecycle.py",
    '''    newest = _checked(c, workflow, instance_id)
    k = c.store.keys(workflow, instance_id)
    started: list[RunRef] = []
''',
    '''    newest = _checked(c, workflow, instance_id)
    k = c.store.keys(workflow, instance_id)
    started: list[RunRef] = []
    if keep_data:  # MUTATION c04: the old two-step restart (read inputs, reset, submit them)
        snap0, _ = c.store.snapshot(k)
        raw0 = c.store.read_data(workflow, instance_id,
                                 sorted(n for n in newest.inputs if n in snap0.names))

        def reset(graph: Graph, snap: Snapshot) -> Step | None:
            got = transitions.restart(c.machine, graph, newest, k, snap, {}, c.clock())
            return None if got is None else got[0]

        if c.change(workflow, instance_id, reset) is None or not raw0:
            return None
        return c.submit(workflow, instance_id,  # type: ignore[attr-defined]
                        [codec.decode(newest, n, v) for n, v in raw0.items()])
''')]
M["c05"] = [rep("polaris_celery/instance.py",
    "and (bool(self.open) or not self.completed))",
    "and (not self.completed))  # MUTATION c05")]
M["c06"] = [rep("polaris_celery/stores/shared.py",
    "        waited = 0.0\n        while True:\n",
    "        return False  # MUTATION c06: submits never see a retirement\n"
    "        waited = 0.0\n        while True:\n"),
    rep("polaris_celery/stores/shared.py",
    "                if not gone and not pending:\n",
    "                if True:  # MUTATION c06 (the one-round-trip check too)\n")]
M["c06b"] = [rep("polaris_celery/lifecycle.py",
    '''        status, _ = c.store.cas(transitions.bump(k, snap), snap, k)
        if status == "applied":
            return False''',
    '''        return False  # MUTATION c06b: no fenced bump''')]
M["c07a"] = [rep("polaris_celery/recovery.py",
    "        store.postpone(member, seen, now + interval * 4)",
    "        pass  # MUTATION c07a: no postpone")]
M["c07b"] = [rep("polaris_celery/stores/shared.py",
    "        first = rng.randrange(BUCKETS)", "        first = 0  # MUTATION c07b"),
             rep("polaris_celery/stores/shared.py",
    "            start = rng.randrange(count)", "            start = 0  # MUTATION c07b")]
M["c13"] = [rep("polaris_celery/recovery.py",
    '''        counts["skipped"] += 1  # pinned to a version this process lacks''',
    '''        counts["skipped"] += 1  # pinned to a version this process lacks
        store.postpone(member, seen, now + 20)  # MUTATION c13''')]
M["c10"] = [rep("polaris_celery/transitions.py",
    '''    m.close(graph, k, snap.inc, doc, step, now, "deleted")
''', '''    # MUTATION c10: runs in flight not closed
''')]
M["c11"] = [rep("polaris_celery/layout.py",
    '''        return tuple(f"{self.tag}:{kind}" for kind in LASTING)''',
    '''        return tuple(f"{self.tag}:{kind}" for kind in LASTING
                     if kind != "late")  # MUTATION c11''')]
M["c12"] = [rep("polaris_celery/stores/begin.lua",
    "  if #KEYS >= 5 then redis.call('ZADD', KEYS[5], 'LT', ARGV[6], ARGV[7]) end\n",
    "  -- MUTATION c12: no ZADD LT of the index\n")]
M["c15"] = [rep("polaris_celery/coordinator.py",
    "        if was and was != digest:", "        if False:  # MUTATION c15")]

M["c08"] = [rep("polaris_celery/invoke.py",
    "        raw = None if produced is None else _checked(spec, produced, max_bytes)",
    "        raw = None  # MUTATION c08: not encoded in the attempt"),
    rep("polaris_celery/attempts.py",
    "co.machine, graph, k, snap, c.run, c.builder, c.token, out.raw,\n",
    "co.machine, graph, k, snap, c.run, c.builder, c.token,"
    " codec.encode(out.produced) if out.produced is not None else None,\n")]
# Issue 12 (the run's state as fields read partially): a waiting join that is never released
# (its count of active ancestors never goes down), and a partial view that takes a field it
# did not read for an absent one. f02 changes which builders run, not whether commits are
# fenced, so the simulator's invariants pass it (200 seeds: 0 failing); it is caught by
# tests/test_semantics.py::test_a_join_waits_for_an_active_upstream_even_with_its_inputs_present.
M["f01"] = [rep("polaris_celery/frontier.py",
    """            self.n_active -= 1
            for w in self.waiting:
                if graph.is_upstream(builder, w):
                    self.waiting[w] -= 1""",
    """            self.n_active -= 1  # MUTATION f01: waiting counts never go down""")]
M["f02"] = [rep("polaris_celery/fields.py",
    """        if self.known is None:
            return
        missing""",
    """        if True:  # MUTATION f02: what was not read counts as absent
            return
        missing""")]
# Issue 12 item 4, quiet commits (machine.Machine.seal_quiet): a sibling's commit applied
# without the version fence no longer checks that the counters it moves stay above 0, so the
# last branch of a fan-out can apply the "not last" decision it made before its sibling
# committed. Caught by the simulator (300 seeds: seed 171, a run never settles) and by
# tests/test_quiet_commits.py.
M["q01"] = [rep("polaris_celery/stores/cas.lua",
    "  if h.active <= 0 then return nil end\n",
    "  -- MUTATION q01: no active guard\n"),
    rep("polaris_celery/stores/cas.lua",
    "    if hw[a[i]] <= 0 then return nil end\n",
    "    -- MUTATION q01: no waiting guard\n")]
# Settling a run deletes only the fields it read, not those its own step wrote or deleted
# (the last builder's token `a:N:B`, deleted in the same step, stays behind). Caught by the
# simulator's `leftovers` invariant and tests/test_distributed.py's one-script chain test.
M["f03"] = [rep("polaris_celery/machine.py",
    "gone = [run.fields.full(f) for f in sorted(run.fields.names())]",
    "gone = [run.fields.full(f) for f in run.fields.values]  # MUTATION f03")]
M["c09"] = [rep("polaris_celery/invoke.py",
    "        return codec.encode_valid(produced, max_bytes)",
    "        return codec.encode(produced)  # MUTATION c09: no validation")]


def main() -> None:
    name, root = sys.argv[1], pathlib.Path(sys.argv[2])
    for path, old, new in M[name]:
        p = root / path
        text = p.read_text()
        if text.count(old) != 1:
            raise SystemExit(f"{name}: {path} holds the text to replace {text.count(old)} times")
        p.write_text(text.replace(old, new))


if __name__ == "__main__":
    main()
