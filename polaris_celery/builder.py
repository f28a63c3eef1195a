"""Builders: the units of work, declared as classes or typed functions.

A builder's options are validated once, when the class is created, into a frozen `BuilderSpec`;
everything downstream (the graph compiler, the executors) reads the spec, never the class
attributes, so a mistake surfaces at import time rather than when a message arrives.
"""

from __future__ import annotations

import functools
import inspect
import re
import types
import typing
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any, ClassVar, Generic, ParamSpec, TypeVar, Union, overload

from pydantic import BaseModel

from .errors import DeclarationError

if TYPE_CHECKING:
    from .context import BuilderContext

DataType = type[BaseModel]

_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_.-]{0,127}$")

#: Options a workflow may give defaults for; a builder's own setting (on it or on a base class
#: of its own) wins over the workflow's.
DEFAULTABLE = ("max_retries", "time_limit", "retry_backoff", "retry_backoff_max")


def datum_name(tp: DataType) -> str:
    """The name a datum type is stored and messaged under: its class name.

    Two different classes with one name in one workflow are rejected at registration, so the
    name is unambiguous within a workflow and stays readable in Redis and in Flower.
    """
    return tp.__name__


@dataclass(frozen=True)
class BuilderSpec:
    """The validated, immutable description of one builder."""

    name: str
    consumes: tuple[DataType, ...]
    optionals: tuple[DataType, ...]
    accesses: tuple[DataType, ...]
    produces: DataType
    max_retries: int
    time_limit: float
    retry_backoff: float
    retry_backoff_max: float
    queue: str | None
    builder_cls: type[Builder]
    #: The DEFAULTABLE options the builder set itself; the others take the workflow's defaults.
    explicit: frozenset[str] = frozenset()

    # Names are read on every frontier step: computed once per spec (cached_property writes the
    # instance __dict__ directly, which a frozen dataclass allows).
    @functools.cached_property
    def consume_names(self) -> tuple[str, ...]:
        return tuple(datum_name(t) for t in self.consumes)

    @functools.cached_property
    def trigger_names(self) -> tuple[str, ...]:
        """Data whose arrival can make this builder eligible: consumes and optionals."""
        return tuple(datum_name(t) for t in (*self.consumes, *self.optionals))

    @functools.cached_property
    def readable_names(self) -> tuple[str, ...]:
        """Everything the builder may read, in declaration order (consumes, optionals,
        accesses): the order its before-hook receives new inputs in."""
        return tuple(datum_name(t) for t in (*self.consumes, *self.optionals, *self.accesses))

    @functools.cached_property
    def produces_name(self) -> str:
        return datum_name(self.produces)

    def with_defaults(self, defaults: Mapping[str, float]) -> BuilderSpec:
        """This spec with a workflow's defaults applied to the options the builder left unset."""
        own = {k: v for k, v in defaults.items() if k in DEFAULTABLE and k not in self.explicit}
        if not own:
            return self
        values: dict[str, Any] = {k: (int(v) if k == "max_retries" else float(v))
                                  for k, v in own.items()}
        return replace(self, **values)

    def new_builder(self) -> Builder:
        """A fresh builder object for one attempt."""
        return self.builder_cls.for_attempt()

    def backoff(self, attempt: int) -> float:
        """Seconds to wait before retry number `attempt` (1-based): exponential, capped."""
        if self.retry_backoff <= 0:
            return 0.0
        return float(min(self.retry_backoff * (2 ** (attempt - 1)), self.retry_backoff_max))


class Builder:
    """Base class of builders. Subclasses declare their data and implement `process`.

    Class options (all validated when the subclass is created):
      consumes: data that must all be present; any of them arriving new triggers the builder.
      optionals: data that trigger the builder and are readable, but are never required.
      accesses: data readable by the builder that never trigger it.
      produces: the one datum type `process` returns (or None for "not now").
      max_retries: retries after a failure before the run fails (0 = no retry).
      time_limit: seconds one attempt may take; also bounds how long a builder held by a
        crashed worker waits before it is re-run.
      retry_backoff / retry_backoff_max: exponential backoff between retries, in seconds.
      queue: the Celery queue this builder's task is routed to (None: the app's default).
      name: defaults to the class name.

    A base class that only shares options is not a builder: mark it `abstract = True` (or
    `class Base(pc.Builder, abstract=True)`); one that declares no data and no `process` is
    taken as abstract too. Options it sets are inherited and count as the subclass's own.
    """

    consumes: ClassVar[Sequence[DataType]] = ()
    optionals: ClassVar[Sequence[DataType]] = ()
    accesses: ClassVar[Sequence[DataType]] = ()
    produces: ClassVar[DataType | None] = None
    max_retries: ClassVar[int] = 0
    time_limit: ClassVar[float] = 300.0
    retry_backoff: ClassVar[float] = 0.0
    retry_backoff_max: ClassVar[float] = 60.0
    queue: ClassVar[str | None] = None
    name: ClassVar[str | None] = None
    abstract: ClassVar[bool] = False
    spec: ClassVar[BuilderSpec]

    def __init_subclass__(cls, abstract: bool = False, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if abstract or cls.__dict__.get("abstract") is True or _only_options(cls):
            cls.abstract = True  # in the class's own dict, so subclasses are not abstract
            return
        cls.abstract = False
        cls.spec = _validate(cls)

    @classmethod
    def for_attempt(cls) -> Builder:
        """The object `process` is called on for one attempt (a fresh one each time)."""
        return cls()

    def process(self, ctx: BuilderContext) -> BaseModel | None:
        raise NotImplementedError


def is_abstract(cls: type[Builder]) -> bool:
    """True for a base class of shared options, which no workflow can run."""
    return cls.__dict__.get("abstract") is True


def _only_options(cls: type[Builder]) -> bool:
    """A subclass that declares no data and no process shares options: it is a base class."""
    return (cls.process is Builder.process and cls.produces is None
            and not cls.consumes and not cls.optionals and not cls.accesses)


def _is_model(tp: object) -> bool:
    return isinstance(tp, type) and issubclass(tp, BaseModel)


def _validate(cls: type[Builder]) -> BuilderSpec:
    problems: list[str] = []
    name = cls.__dict__.get("name") or cls.__name__
    if not isinstance(name, str) or not _NAME.match(name):
        problems.append(f"name {name!r} must match {_NAME.pattern}")

    def data_list(attr: str) -> tuple[DataType, ...]:
        value = getattr(cls, attr)
        if isinstance(value, type) or not isinstance(value, (list, tuple, set, frozenset)):
            problems.append(f"{attr} must be a list of pydantic models, got {value!r}")
            return ()
        bad = [v for v in value if not _is_model(v)]
        if bad:
            problems.append(f"{attr} holds non-pydantic types: {', '.join(map(repr, bad))}")
        return tuple(v for v in value if _is_model(v))

    consumes = data_list("consumes")
    optionals = data_list("optionals")
    accesses = data_list("accesses")
    produces = cls.produces
    if produces is None:
        problems.append("produces is not set")
    elif not _is_model(produces):
        problems.append(f"produces must be a pydantic model class, got {produces!r}")
    if not consumes and not optionals:
        problems.append("declares neither consumes nor optionals, so nothing can trigger it")
    seen: dict[str, str] = {}
    for attr, items in (("consumes", consumes), ("optionals", optionals), ("accesses", accesses)):
        for t in items:
            prev = seen.setdefault(datum_name(t), attr)
            if prev != attr or sum(1 for x in items if x is t) > 1:
                problems.append(f"{datum_name(t)} is declared more than once ({prev}, {attr})")
    for attr, lo in (("max_retries", 0),):
        v = getattr(cls, attr)
        if not isinstance(v, int) or isinstance(v, bool) or v < lo:
            problems.append(f"{attr} must be an int >= {lo}, got {v!r}")
    for attr in ("time_limit", "retry_backoff", "retry_backoff_max"):
        v = getattr(cls, attr)
        positive = attr == "time_limit"
        if not isinstance(v, (int, float)) or isinstance(v, bool) or v < 0 or (positive and v == 0):
            problems.append(f"{attr} must be a {'positive' if positive else 'non-negative'} "
                            f"number, got {v!r}")
    if cls.queue is not None and not isinstance(cls.queue, str):
        problems.append(f"queue must be a string or None, got {cls.queue!r}")
    if cls.process is Builder.process:
        problems.append("does not implement process(ctx)")
    if problems:
        raise DeclarationError(
            f"builder {cls.__qualname__} is invalid: " + "; ".join(sorted(set(problems)))
        )
    assert produces is not None
    return BuilderSpec(
        name=name,
        consumes=consumes,
        optionals=optionals,
        accesses=accesses,
        produces=produces,
        max_retries=cls.max_retries,
        time_limit=float(cls.time_limit),
        retry_backoff=float(cls.retry_backoff),
        retry_backoff_max=float(cls.retry_backoff_max),
        queue=cls.queue,
        builder_cls=cls,
        explicit=frozenset(
            attr for attr in DEFAULTABLE
            if any(attr in k.__dict__ for k in cls.__mro__ if k not in _BASES)),
    )


def _optional_of(tp: Any) -> Any | None:
    """`X | None` -> X, else None."""
    origin = typing.get_origin(tp)
    if origin in (Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(args) == 1 and len(typing.get_args(tp)) == 2:
            return args[0]
    return None


F = Callable[..., Any]
P = ParamSpec("P")
R = TypeVar("R")


class FunctionBuilder(Builder, Generic[P, R], abstract=True):
    """The Builder class `@builder` makes from a function; calling it calls the function.

    A unit test can then call `match_cabbie(RideRequested(...))` and get what the function
    returns, as if it were undecorated, while a workflow lists the same name as a builder. The
    `__new__` below is what makes the call, and what type checkers read as its signature.
    """

    func: ClassVar[Callable[..., Any]]

    def __new__(cls, *args: P.args, **kwargs: P.kwargs) -> R:  # type: ignore[misc]
        result: R = cls.func(*args, **kwargs)
        return result

    @classmethod
    def for_attempt(cls) -> Builder:
        """Bypass the calling `__new__`: an attempt needs the builder object itself."""
        obj: Builder = object.__new__(cls)
        Builder.__init__(obj)  # plain object init: a function builder defines no __init__
        return obj


_BASES = (Builder, FunctionBuilder)


@overload
def builder(func: Callable[P, R], /) -> type[FunctionBuilder[P, R]]: ...
@overload
def builder(
    *,
    name: str | None = ...,
    accesses: Sequence[DataType] = ...,
    max_retries: int = ...,
    time_limit: float = ...,
    retry_backoff: float = ...,
    retry_backoff_max: float = ...,
    queue: str | None = ...,
) -> Callable[[Callable[P, R]], type[FunctionBuilder[P, R]]]: ...


def builder(func: F | None = None, /, **options: Any) -> Any:
    """Turn a typed function into a Builder class.

    Parameters annotated with a model are consumes; `X | None = None` parameters are optionals;
    the return annotation (`Y` or `Y | None`) is what it produces. Accesses, which never trigger,
    are given as an option and read through a parameter named `ctx` if the function wants one.
    The result is a Builder class that, called, still runs the plain function (unit tests).
    """

    def wrap(fn: F) -> type[Builder]:
        try:
            hints = typing.get_type_hints(fn)
        except Exception as exc:  # unresolvable forward references
            raise DeclarationError(
                f"@builder {fn.__qualname__}: cannot read its type hints: {exc}"
            ) from exc
        params = inspect.signature(fn).parameters
        consumes: list[DataType] = []
        optionals: list[DataType] = []
        readers: list[tuple[str, DataType | None]] = []
        problems: list[str] = []
        for pname, p in params.items():
            if pname == "ctx":
                readers.append((pname, None))
                continue
            hint = hints.get(pname)
            inner = _optional_of(hint)
            if _is_model(hint):
                consumes.append(typing.cast(DataType, hint))
                readers.append((pname, typing.cast(DataType, hint)))
            elif inner is not None and _is_model(inner):
                if p.default is not None:
                    problems.append(f"optional parameter {pname!r} must default to None")
                optionals.append(inner)
                readers.append((pname, inner))
            else:
                problems.append(f"parameter {pname!r} is not annotated with a pydantic model")
        ret = hints.get("return")
        produced = _optional_of(ret) or ret
        if not _is_model(produced):
            problems.append(
                f"return annotation must be a pydantic model (or X | None), got {ret!r}"
            )
        if problems:
            raise DeclarationError(f"@builder {fn.__qualname__} is invalid: " + "; ".join(problems))

        def process(self: Builder, ctx: BuilderContext) -> BaseModel | None:
            kwargs = {n: (ctx if t is None else ctx.get(t)) for n, t in readers}
            result: BaseModel | None = fn(**kwargs)
            return result

        attrs: dict[str, Any] = {
            "consumes": tuple(consumes),
            "optionals": tuple(optionals),
            "produces": produced,
            "process": process,
            "__doc__": fn.__doc__,
            "__module__": fn.__module__,
            "__qualname__": fn.__qualname__,
            "func": staticmethod(fn),
            "__signature__": inspect.signature(fn),
            "__wrapped__": fn,
        }
        attrs.update(options)
        attrs.setdefault("name", fn.__name__)
        return type(fn.__name__, (FunctionBuilder,), attrs)

    if func is not None:
        return wrap(func)
    return wrap
