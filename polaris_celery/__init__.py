"""polaris-celery: data-driven workflows on Celery and Redis.

Declare data (pydantic models) and builders that consume and produce them; a workflow compiles
into a dependency graph at registration; each delta of new data runs whatever it makes runnable.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from . import codec
from .builder import Builder, BuilderSpec, FunctionBuilder, builder, datum_name
from .context import BuilderContext
from .errors import (
    AttemptFailed,
    BuilderFailed,
    ConfigurationError,
    DeclarationError,
    DeltaConflict,
    GraphError,
    GraphWarning,
    InstanceClosed,
    InvalidInput,
    MessageRejected,
    MissingData,
    PolarisError,
    StoreUnavailable,
    UndeclaredData,
    UnknownData,
    UnknownInstance,
    UnknownWorkflow,
    VersionInUse,
    WaitTimeout,
)
from .executors.local import Executor
from .frontier import BuilderError
from .graph import Graph, compile_workflow
from .hooks import HookInfo
from .instance import STATUSES
from .registry import Registry
from .result import RunResult
from .stores.memory import MemoryStore
from .views import DatumView, ErrorView, InstancePage, InstanceSummary, InstanceView, RunView
from .workflow import Workflow

if TYPE_CHECKING:
    from .executors.celery import CeleryExecutor, RunHandle
    from .stores.redis import RedisStore

__all__ = [
    # declaring
    "Builder",
    "BuilderContext",
    "BuilderSpec",
    "FunctionBuilder",
    "Workflow",
    "builder",
    "codec",
    "datum_name",
    # compiling and running
    "CeleryExecutor",
    "Executor",
    "Graph",
    "HookInfo",
    "Registry",
    "RunHandle",
    "RunResult",
    "compile_workflow",
    # reading instances (CeleryExecutor.instance / instances / wait_instance)
    "STATUSES",
    "DatumView",
    "ErrorView",
    "InstancePage",
    "InstanceSummary",
    "InstanceView",
    "RunView",
    # stores
    "MemoryStore",
    "RedisStore",
    # errors
    "BuilderError",
    "BuilderFailed",
    "ConfigurationError",
    "DeclarationError",
    "GraphError",
    "GraphWarning",
    "InstanceClosed",
    "InvalidInput",
    "DeltaConflict",
    "MessageRejected",
    "AttemptFailed",
    "MissingData",
    "PolarisError",
    "StoreUnavailable",
    "UndeclaredData",
    "UnknownData",
    "UnknownInstance",
    "UnknownWorkflow",
    "VersionInUse",
    "WaitTimeout",
]

__version__ = "0.1.0"


def __getattr__(name: str) -> Any:
    """Load the Redis and Celery adapters only when asked for."""
    if name == "RedisStore":
        from .stores.redis import RedisStore

        return RedisStore
    if name in ("CeleryExecutor", "RunHandle"):
        from .executors import celery as _celery

        return getattr(_celery, name)
    raise AttributeError(f"module 'polaris_celery' has no attribute {name!r}")
