"""The registry: compiled workflows by key, and the store their instances live in."""

from __future__ import annotations

import re

from .errors import InvalidInput, UnknownWorkflow
from .graph import Graph, compile_workflow
from .stores.base import Store
from .workflow import Workflow

_KEY = re.compile(r"^[A-Za-z0-9_.:-]{1,100}$")
MAX_INSTANCE_ID = 200


def check_instance_id(instance_id: object) -> str:
    """Instance ids end up in Redis keys and Celery messages: keep them printable and bounded."""
    if not isinstance(instance_id, str):
        raise InvalidInput(f"instance id must be a string, got {type(instance_id).__name__}")
    if not instance_id:
        raise InvalidInput("instance id is empty")
    if len(instance_id) > MAX_INSTANCE_ID:
        raise InvalidInput(
            f"instance id is {len(instance_id)} characters long, over the limit of "
            f"{MAX_INSTANCE_ID}"
        )
    if any(c in instance_id for c in "{}") or not instance_id.isprintable():
        raise InvalidInput(
            f"instance id {instance_id!r:.60} holds braces or unprintable characters"
        )
    return instance_id


class Registry:
    """Workflows registered under keys, compiled once, plus the store instances persist in."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self._graphs: dict[str, Graph] = {}

    def register(self, key: str, workflow: type[Workflow]) -> Graph:
        """Compile `workflow` and register it under `key`; raises GraphError on a bad graph."""
        if not isinstance(key, str) or not _KEY.match(key):
            raise InvalidInput(f"workflow key {key!r} must match {_KEY.pattern}")
        graph = compile_workflow(key, workflow)
        self._graphs[key] = graph
        return graph

    def graph(self, key: str) -> Graph:
        try:
            return self._graphs[key]
        except KeyError:
            raise UnknownWorkflow(key) from None

    def keys(self) -> list[str]:
        return sorted(self._graphs)

    def __contains__(self, key: object) -> bool:
        return key in self._graphs
