"""Hooks: user code around builders and runs that must never break a flow (DBF's listeners).

Five hooks, on every executor (sequential, parallel, Celery):

    before(builder_cls, new_inputs)     before each attempt, with the inputs new in the run
    after(builder_cls, produced)        after a successful attempt (produced may be None)
    on_error(builder_cls, error)        after each failed attempt (a `BuilderError`)
    before_run(delta)                   once a run has started (its delta stored), before it
                                        dispatches anything
    after_run(result)                   once the run has settled (a `RunResult`, failed or not)

Each hook may take one more positional argument, a `HookInfo` naming the workflow, instance id,
run and attempt. A hook that raises is logged with its traceback and ignored: it fails neither
the builder nor the run, as DBF's listeners do. With `strict=True` (the executors'
`strict_hooks=True`) it is not ignored: a builder hook's exception fails that attempt (its
retries apply), a run hook's reaches the caller (`sequential`, `parallel`, `submit_delta`), or,
for `after_run` on a Celery worker, is logged as an error (the run has settled by then).
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

log = logging.getLogger("polaris_celery")

#: Any hook: called with its documented arguments, and a HookInfo if it takes one more.
Hook = Callable[..., object]

#: How many documented positional arguments each hook takes (before the optional HookInfo).
ARITY = {"before": 2, "after": 2, "on_error": 2, "before_run": 1, "after_run": 1}


@dataclass(frozen=True)
class HookInfo:
    """Where a hook was called from: the instance, its run, and the attempt (builder hooks)."""

    workflow: str
    instance_id: str
    run: int
    attempt: int | None = None


class Hooks:
    """The hooks of one executor, each called through `call`, which keeps a raising hook from
    breaking the flow unless `strict`."""

    def __init__(self, *, strict: bool = False, **hooks: Hook | None) -> None:
        unknown = sorted(set(hooks) - set(ARITY))
        if unknown:
            raise TypeError(f"unknown hook(s) {unknown}; hooks are {sorted(ARITY)}")
        self.strict = strict
        self._fns: dict[str, tuple[Hook, bool]] = {}
        for name, fn in hooks.items():
            if fn is None:
                continue
            if not callable(fn):
                raise TypeError(f"hook {name}={fn!r} is not callable")
            self._fns[name] = (fn, _takes_info(fn, ARITY[name]))

    def __contains__(self, name: str) -> bool:
        return name in self._fns

    def call(self, name: str, *args: Any, info: HookInfo) -> None:
        """Call hook `name` if set. Its exception is logged and swallowed, or raised if strict."""
        entry = self._fns.get(name)
        if entry is None:
            return
        fn, with_info = entry
        try:
            if with_info:
                fn(*args, info)
            else:
                fn(*args)
        except Exception:
            if self.strict:
                raise
            log.exception("polaris: the %s hook raised in %s/%s run %s%s; ignored (the "
                          "executor's strict_hooks=True would not ignore it)", name,
                          info.workflow, info.instance_id, info.run,
                          "" if info.attempt is None else f" attempt {info.attempt}")


def _takes_info(fn: Hook, arity: int) -> bool:
    """Whether `fn` accepts one positional argument more than the hook's documented ones."""
    try:
        params = inspect.signature(fn).parameters.values()
    except (TypeError, ValueError):  # a builtin without a signature: call it plainly
        return False
    positional = 0
    for p in params:
        if p.kind is p.VAR_POSITIONAL:
            return True
        if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD):
            positional += 1
    return positional > arity


NO_HOOKS = Hooks()
