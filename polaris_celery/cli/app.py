"""Finding the user's app (`--app`), the `polaris` group, and one line per expected error.

The app is the module users start workers from (`celery -A worker worker`): `--app` (or
POLARIS_APP, default "worker") names it, and the CLI finds its `pc.CeleryExecutor` and
`pc.Registry` by attribute (`executor`, `registry`, or `MODULE:ATTR`) or else by type.
"""

from __future__ import annotations

import importlib
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import click
from kombu.exceptions import OperationalError as BrokerError
from rich.console import Console

from ..errors import PolarisError
from ..executors.celery import CeleryExecutor
from ..query import Query
from ..registry import Registry
from ..stores.redis import RedisStore

DEFAULT_APP = "worker"
#: The width of a console that is not a terminal: wide enough never to cut a line.
FULL_WIDTH = 1000


# -- finding the user's app -------------------------------------------------------------------


@dataclass(frozen=True)
class App:
    """What the CLI found in the user's module."""

    spec: str
    registry: Registry
    executor: CeleryExecutor | None

    def need_executor(self, command: str) -> CeleryExecutor:
        if self.executor is None:
            raise click.ClickException(
                f"`{command}` needs a polaris_celery.CeleryExecutor in {self.spec}, which "
                "holds only a Registry")
        return self.executor

    def query(self, command: str) -> Query:
        """The query API over the registry's store (no executor needed)."""
        self.need_redis(command)
        return Query(self.registry)

    def need_redis(self, command: str) -> RedisStore:
        store = self.registry.store
        if not isinstance(store, RedisStore):
            raise click.ClickException(
                f"`{command}` reads Redis, but the registry in {self.spec} stores in "
                f"{type(store).__name__}")
        return store


def _by_type(module: Any, tp: type) -> list[Any]:
    found: list[Any] = []
    for name in dir(module):
        obj = getattr(module, name, None)
        if isinstance(obj, tp) and not any(obj is f for f in found):
            found.append(obj)
    return found


def load_app(spec: str) -> App:
    """Import MODULE (from the current directory too, as `celery -A` does) and find the
    executor and registry in it."""
    module_name, _, attr = spec.partition(":")
    if not module_name:
        raise click.ClickException(f"--app {spec!r}: expected MODULE or MODULE:ATTR")
    cwd = os.getcwd()
    if cwd not in sys.path:
        sys.path.insert(0, cwd)
    try:
        module = importlib.import_module(module_name)
    except PolarisError:
        raise
    except ImportError as exc:
        raise click.ClickException(f"cannot import the app module {module_name!r}: {exc}"
                                   ) from None
    except Exception as exc:
        raise click.ClickException(f"importing the app module {module_name!r} failed: "
                                   f"{type(exc).__name__}: {exc}") from None
    if attr:
        obj = getattr(module, attr, None)
        if isinstance(obj, CeleryExecutor):
            return App(spec, obj.registry, obj)
        if isinstance(obj, Registry):
            execs = [e for e in _by_type(module, CeleryExecutor) if e.registry is obj]
            return App(spec, obj, execs[0] if len(execs) == 1 else None)
        what = "nothing" if obj is None else f"a {type(obj).__name__}"
        raise click.ClickException(f"{spec} is {what}, not a polaris_celery CeleryExecutor "
                                   "or Registry")
    executor = getattr(module, "executor", None)
    if not isinstance(executor, CeleryExecutor):
        execs = _by_type(module, CeleryExecutor)
        if len(execs) > 1:
            raise click.ClickException(f"{module_name} holds {len(execs)} CeleryExecutors; "
                                       f"name one with --app {module_name}:ATTR")
        executor = execs[0] if execs else None
    registry = getattr(module, "registry", None)
    if executor is not None:
        registry = executor.registry
    elif not isinstance(registry, Registry):
        regs = _by_type(module, Registry)
        if len(regs) != 1:
            found = "no" if not regs else str(len(regs))
            raise click.ClickException(
                f"{module_name} holds {found} polaris_celery Registry/CeleryExecutor objects; "
                f"name one with --app {module_name}:ATTR")
        registry = regs[0]
    return App(spec, registry, executor)


# -- one line per expected error --------------------------------------------------------------


class Group(click.Group):
    """Turns the library's errors (and a broker that is down) into one line and exit code 1."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except PolarisError as exc:
            raise click.ClickException(str(exc).replace("\n", " ")) from None
        except BrokerError as exc:
            raise click.ClickException(f"the Celery broker is unreachable: {exc}") from None


def console(full_width: bool = False) -> Console:
    """Rich's console; `full_width`: when stdout is not a terminal (a pipe, a file, a test),
    lines are never cut to a guessed 80 columns (wide tables such as timelines stay whole)."""
    if full_width and not sys.stdout.isatty():
        return Console(highlight=False, soft_wrap=False, width=FULL_WIDTH)
    return Console(highlight=False, soft_wrap=False)


@click.group(cls=Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--app", "-A", "app_spec", envvar="POLARIS_APP", default=DEFAULT_APP,
              show_default=True, metavar="MODULE[:ATTR]",
              help="The module holding your CeleryExecutor and/or Registry (env POLARIS_APP).")
@click.version_option(package_name="polaris-celery")
@click.pass_context
def cli(ctx: click.Context, app_spec: str) -> None:
    """Operate polaris-celery workflows: inspect graphs and instances, submit, recover."""
    cache: dict[str, App] = {}

    def get() -> App:
        if "app" not in cache:
            cache["app"] = load_app(app_spec)
        return cache["app"]

    ctx.obj = get


def app_of(ctx: click.Context) -> App:
    getter: Callable[[], App] = ctx.find_root().obj
    return getter()
