"""Every error polaris-celery raises, so callers never import redis or celery to catch one.

    PolarisError
     +-- DeclarationError      a Builder or Workflow class is malformed (raised at class creation)
     +-- GraphError            registration found problems in a workflow's graph (all listed)
     +-- UnknownWorkflow       no workflow is registered under that key
     +-- UnknownData           a delta holds a type the workflow does not know
     +-- InvalidInput          a delta or id is malformed: not a model, too large, bad id ...
 |    +-- DeltaConflict     a delta_id already used for a different delta
     +-- UndeclaredData        a builder asked its context for data it did not declare
     +-- MissingData           a builder needed (ctx.need, ctx[T]) a datum the instance lacks
     +-- BuilderFailed         a builder failed for good; carries the partial result
     +-- ConfigurationError    a Celery app or store is set up unsafely or inconsistently
     +-- StoreUnavailable      the store could not be reached (wraps the driver's error)
     +-- WaitTimeout           a run did not settle within the time a caller waited
     +-- MessageRejected       a Celery message was malformed or named an unknown builder
     +-- AttemptFailed         a builder's task reports its failed attempt (to Celery, Flower)
     +-- InstanceClosed        a delta for an instance that was cancelled or timed out
     +-- VersionInUse          retiring a workflow version that live instances still run on
     +-- UnknownInstance       the query API was asked for an instance that does not exist
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .result import RunResult


class PolarisError(Exception):
    """Root of every error raised by polaris-celery."""


class DeclarationError(PolarisError, TypeError):
    """Raised when a Builder class or @builder function is declared with invalid options."""


class GraphError(PolarisError):
    """Raised by registration when a workflow graph is invalid; lists every problem at once."""

    def __init__(self, workflow: str, problems: Iterable[str]) -> None:
        self.workflow = workflow
        self.problems = sorted(set(problems))
        lines = "\n".join(f"  - {p}" for p in self.problems)
        super().__init__(f"workflow {workflow!r} has {len(self.problems)} problem(s):\n{lines}")


class UnknownWorkflow(PolarisError, KeyError):
    """Raised when no workflow is registered under the given key."""

    def __init__(self, key: str) -> None:
        self.key = key
        super().__init__(key)

    def __str__(self) -> str:
        return f"no workflow registered under {self.key!r}"


class UnknownData(PolarisError, TypeError):
    """Raised when a delta holds a datum type that the workflow's builders do not name."""

    def __init__(self, workflow: str, names: Iterable[str]) -> None:
        self.workflow = workflow
        self.names = sorted(names)
        super().__init__(
            f"workflow {workflow!r} does not know data type(s) {', '.join(self.names)}; "
            "nothing was stored"
        )


class InvalidInput(PolarisError, ValueError):
    """Raised when a delta, a datum or an instance id is malformed; nothing is stored."""


class DeltaConflict(InvalidInput):
    """Raised when a delta_id that was already applied comes with different data: a delta_id
    names one delta, so the second is refused rather than silently answered with the first."""


class UndeclaredData(PolarisError, KeyError):
    """Raised when a builder reads a datum it declared in none of consumes/optionals/accesses."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else "undeclared data"


class MissingData(PolarisError, LookupError):
    """Raised by `ctx.need(T)` / `ctx[T]` when the instance holds no `T`; names the datum."""


class GraphWarning(UserWarning):
    """Warned at registration for what looks like a mistake in a workflow's graph (a datum no
    builder produces that the workflow does not list as an input, an output nobody reads);
    `register(..., strict=True)` raises these as a GraphError instead."""


class BuilderFailed(PolarisError):
    """Raised when a builder failed for good (retries spent); holds the run's partial result."""

    def __init__(
        self, builder: str, error_type: str, message: str, result: RunResult | None = None
    ) -> None:
        self.builder = builder
        self.error_type = error_type
        self.message = message
        self.result = result
        super().__init__(f"builder {builder!r} failed: {error_type}: {message}")


class ConfigurationError(PolarisError):
    """Raised when a Celery app, a store or an executor option is unsafe or inconsistent."""


class StoreUnavailable(PolarisError, ConnectionError):
    """Raised when the store cannot be reached; the driver's error is the __cause__."""


class WaitTimeout(PolarisError, TimeoutError):
    """Raised by a run handle whose run did not settle within the timeout given to wait()."""


class MessageRejected(PolarisError):
    """Raised (and logged by workers) for a task message that is malformed or names no builder."""


class AttemptFailed(PolarisError):
    """Raised by a builder's Celery task once its failed attempt is committed, so that Celery
    (Flower, the task_failure signal) sees a failure; the run itself retries or fails per the
    builder's policy, already decided. Never raised to producers (they get BuilderFailed)."""


class InstanceClosed(PolarisError):
    """Raised for a delta sent to an instance that was cancelled or timed out (restart it)."""


class VersionInUse(PolarisError):
    """Raised when retiring a workflow version that live instances still run on; names them."""

    def __init__(self, key: str, version: int, instances: list[str]) -> None:
        self.key = key
        self.version = version
        self.instances = instances
        shown = ", ".join(instances[:20]) + (" ..." if len(instances) > 20 else "")
        super().__init__(f"{key} v{version} still runs {len(instances)} live instance(s): {shown}")


class UnknownInstance(PolarisError, KeyError):
    """Raised by the query API for an instance that does not exist (never created, deleted,
    or expired under `retention`)."""

    def __init__(self, workflow: str, instance_id: str) -> None:
        self.workflow = workflow
        self.instance_id = instance_id
        super().__init__(f"{workflow}/{instance_id}")

    def __str__(self) -> str:
        return f"no instance {self.instance_id!r} of workflow {self.workflow!r}"
