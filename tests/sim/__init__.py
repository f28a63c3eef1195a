"""A deterministic simulator for polaris-celery, in the manner of FoundationDB's and
TigerBeetle's: the real `Coordinator` against a real private redis-server, with time, the
network, process deaths and Redis replies under the control of one seed.

One seed (`world.World`, `schedule.run`) is two or three instance ids of the workflow in
`flows.py` (two versions of one key), three worker processes (real Coordinators, each with its
own Registry and store), a simulated clock handed to them, and a network holding the messages
they send. Each of 20 to 40 steps draws one action: submit (with or without a delta id, again
under an earlier one, with a deadline), deliver a message (the oldest or any), duplicate or drop
one, reconcile, cancel, restart, delete, retire a version, deploy v2 on a worker, move the clock
a little or far. Faults (`faults.py`) strike at every boundary: a write that never reaches Redis
or whose reply is lost after Redis applied it, another process acting while a write is in
flight, a process dying at a fault point or midway through sending, a builder told to fail.
Redis TTLs run on the simulated clock (`ttl.py`). Then the world quiesces without faults until
nothing is pending, and is checked once more after the clock has passed every TTL.

After every step the checks of `invariants.py` (listed there) read Redis with plain redis-py
(`observe.py`, `observe.lua`), never through the library, and compare it with what producers
and operators were told (`record.py`). `compat.py` is the one place that knows which shape of
the Coordinator is being driven (before or after incarnations, an injectable clock).

Run (from the repository root):

    .venv/bin/python -m tests.sim --seeds 500              # seeds 0..499 (-j processes)
    .venv/bin/python -m tests.sim --seeds 500 --start 7000 # seeds 7000..7499
    .venv/bin/python -m tests.sim --seed 1234 -v           # replay one seed, with a step trace
    .venv/bin/pytest tests/sim                             # 2,000 seeds (part of make test)
    SIM_SEEDS=50000 .venv/bin/pytest -m soak tests/sim     # the long run (make soak)

Every failure prints its seed and the command that replays it exactly. Seeds run in a pool of
processes (SIM_PROCESSES, or -j; each on its own database of the one server), and a replay runs
in one: nothing in a seed's schedule depends on where or when it runs. Every decision comes from
the seed (the library's ids and random draws are injected or seeded), and nothing iterates an
unordered collection. In a trace, `  !` lines are faults, indented lines are actions another
process took while a write was in flight, and `  =` lines are what a call returned or raised.
"""
