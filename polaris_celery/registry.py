"""The registry: compiled workflows by key, and the store their instances live in."""

from __future__ import annotations

import re
import warnings

from .checks import mistakes
from .errors import GraphError, GraphWarning, InvalidInput, UnknownWorkflow
from .graph import Graph, compile_workflow
from .stores.base import Store
from .workflow import Workflow

_KEY = re.compile(r"^[A-Za-z0-9_.:-]{1,100}$")
MAX_INSTANCE_ID = 200


def check_instance_id(instance_id: object) -> str:
    """Instance ids end up in Redis keys and Celery messages: keep them printable and bounded,
    and refuse ids that differ from another only by invisible padding."""
    if not isinstance(instance_id, str):
        raise InvalidInput(f"instance id must be a string, got {type(instance_id).__name__}")
    if not instance_id:
        raise InvalidInput("instance id is empty")
    if len(instance_id) > MAX_INSTANCE_ID:
        raise InvalidInput(
            f"instance id is {len(instance_id)} characters long, over the limit of "
            f"{MAX_INSTANCE_ID}"
        )
    if instance_id != instance_id.strip():
        # "ride-1 " and "ride-1" would be two instances that look like one in every log, CLI
        # argument and dashboard; a blank id is a missing id.
        problem = "leading or trailing whitespace" if instance_id.strip() else "only whitespace"
        raise InvalidInput(f"instance id {instance_id!r:.60} has {problem}")
    if any(c in instance_id for c in "{}") or not instance_id.isprintable():
        raise InvalidInput(
            f"instance id {instance_id!r:.60} holds braces or unprintable characters"
        )
    return instance_id


class Registry:
    """Workflows registered under keys, compiled once, plus the store instances persist in.

    A key can hold several versions (`register(key, wf, version=2)`): new instances start on the
    newest, an instance in flight stays on the version it started with until it completes, and
    a version no live instance uses can be retired.

    What looks like a mistake in a graph (see `checks`) is warned as a `GraphWarning`, or
    refused with the GraphError under `strict=True` (here for every registration, or per call).
    """

    def __init__(self, store: Store, *, strict: bool = False) -> None:
        self.store = store
        self.strict = strict
        self._graphs: dict[str, dict[int, Graph]] = {}

    def register(self, key: str, workflow: type[Workflow], version: int = 1, *,
                 strict: bool | None = None) -> Graph:
        """Compile `workflow` and register it as `version` of `key`; raises GraphError on a bad
        graph, and under strict also on what `checks.mistakes` warns about. Registering a
        version again replaces it (e.g. on a module reload)."""
        if not isinstance(key, str) or not _KEY.match(key):
            raise InvalidInput(f"workflow key {key!r} must match {_KEY.pattern}")
        if not isinstance(version, int) or isinstance(version, bool) or version < 1:
            raise InvalidInput(f"workflow version must be a positive int, got {version!r}")
        graph = compile_workflow(key, workflow, version)
        errors, doubts = mistakes(graph)
        if errors or (doubts and (self.strict if strict is None else strict)):
            raise GraphError(key, [*errors, *doubts])
        for doubt in doubts:
            warnings.warn(f"workflow {key!r}: {doubt}", GraphWarning, stacklevel=2)
        self._graphs.setdefault(key, {})[version] = graph
        return graph

    def graph(self, key: str, version: int | None = None) -> Graph:
        """The newest version of `key`, or the one asked for."""
        versions = self._graphs.get(key)
        if not versions:
            raise UnknownWorkflow(key)
        if version is None:
            return versions[max(versions)]
        try:
            return versions[version]
        except KeyError:
            raise UnknownWorkflow(f"{key} v{version}") from None

    def versions(self, key: str) -> list[int]:
        return sorted(self._graphs.get(key, ()))

    def unregister(self, key: str, version: int) -> None:
        """Forget one version (see CeleryExecutor.retire for the checked way)."""
        versions = self._graphs.get(key, {})
        versions.pop(version, None)
        if not versions:
            self._graphs.pop(key, None)

    def graphs(self) -> list[Graph]:
        return [g for key in sorted(self._graphs) for _, g in sorted(self._graphs[key].items())]

    def keys(self) -> list[str]:
        return sorted(self._graphs)

    def __contains__(self, key: object) -> bool:
        return key in self._graphs
