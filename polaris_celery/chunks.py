"""How a wide fan-out's dispatches are packed into broker messages. Pure: no I/O.

A message costs far more than the builder it carries when builders are short: the producer
spends about half a millisecond publishing it, and a prefork worker two or three receiving,
handing it to a pool child and acking it (measured in BENCHMARKS part D). So when one step
dispatches many builders of one run at once (a fan-out), several ride in one message: the
worker runs them one after another, each claimed, run and committed on its own, exactly as
if it had come alone.

Parallelism is kept: a group is packed only beyond `SPREAD` dispatches, and then into at
least `SPREAD` messages, so a fan-out still reaches that many workers at once; `dispatch_chunk`
(a Setting, 1: never pack) caps how many builders share one message. Packing pays only for
short builders: a worker that has spent `pack_spill` seconds on a packed message sends the
builders it still carries as messages of their own (executors/tasks.py), so slow builders do
not queue behind each other in one worker while others idle.

Nothing new can be lost or run twice: every builder keeps its own lease and is claimed on its
own when its turn comes. A builder still waiting in a message when its queued lease runs out
(`dispatch_timeout`) is sent again by the reconciler; whichever copy claims it first runs it,
the other finds it claimed and skips it.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Sequence

from .instance import Dispatch

#: A group of dispatches is packed only beyond this many, and into at least this many messages.
SPREAD = 32


def pack(dispatches: Sequence[Dispatch], most: int,
         channel: Callable[[Dispatch], Hashable]) -> list[list[Dispatch]]:
    """The messages to send, each a list of dispatches (the first names the message's task).

    Only dispatches of one run that go out at once on one `channel` (the queue they are
    routed to) share a message; the order within a group is kept."""
    groups: dict[Hashable, list[Dispatch]] = {}
    out: list[list[Dispatch]] = []
    for d in dispatches:
        if most <= 1 or d.countdown:
            out.append([d])
            continue
        key = (d.workflow, d.instance_id, d.incarnation, d.run, d.version, channel(d))
        groups.setdefault(key, []).append(d)
    for group in groups.values():
        size = max(1, min(most, len(group) // SPREAD))  # so at least SPREAD messages
        out += [group[i:i + size] for i in range(0, len(group), size)]
    return out
