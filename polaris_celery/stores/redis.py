"""The Redis store: the only module that imports redis.

Key layout (every key of one instance shares the hash tag `{workflow/instance}`):

    pc:{wf/id}:data        HASH  datum name -> JSON           the instance's data
    pc:{wf/id}:state       HASH  v -> version, doc -> JSON    runs in flight (see coordinator)
    pc:{wf/id}:lease       HASH  run/builder -> token|q|deadline|resends or token|r|deadline|claim
    pc:{wf/id}:deltas      HASH  delta id -> run             producers' idempotency keys
    pc:{wf/id}:seq         STRING                            run counter of in-process runs
    pc:{wf/id}:run:N       HASH  datum -> JSON, _outcome     what run N produced, how it ended
    pc:{wf/id}:wake:N      LIST                              pushed once when run N settles
    pc:{wf/id}:log         STREAM                            one entry per builder attempt
    pc:{wf/id}:history     LIST                              summaries of settled runs
    pc:{wf/id}:late        HASH  datum -> JSON               produced after the instance closed
    pc:index               ZSET  wf/id -> when to look       instances the reconciler watches
    pc:live:wf:version     SET   instance ids               instances pinned to a version

All writes of the distributed path go through one Lua script (`cas.lua`) that applies a list of
writes only if the instance's version is still the one they were computed from.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from importlib import resources
from typing import Any, TypeVar
from urllib.parse import urlsplit, urlunsplit

import redis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError
from redis.exceptions import TimeoutError as RedisTimeoutError

from ..errors import StoreUnavailable

T = TypeVar("T")


def redact(url: str) -> str:
    """`redis://user:secret@host` -> `redis://user:***@host`, for logs and reprs."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.rsplit("@", 1)
    user = parts.username or ""
    return urlunsplit(parts._replace(netloc=f"{user}:***@{netloc[-1]}"))


def _script(name: str) -> str:
    return resources.files("polaris_celery.stores").joinpath(name).read_text()


@dataclass(frozen=True)
class Keys:
    """Every Redis key of one instance, from one template."""

    prefix: str
    workflow: str
    instance_id: str

    @property
    def tag(self) -> str:
        return f"{self.prefix}:{{{self.workflow}/{self.instance_id}}}"

    @property
    def member(self) -> str:
        """The instance's name in the reconciler's index."""
        return f"{self.workflow}/{self.instance_id}"

    def __getattr__(self, kind: str) -> str:
        if kind in ("data", "state", "lease", "deltas", "seq", "log", "history", "late"):
            return f"{self.tag}:{kind}"
        raise AttributeError(kind)

    @property
    def lasting(self) -> tuple[str, ...]:
        """The keys that live as long as the instance (run results expire on their own)."""
        return tuple(f"{self.tag}:{kind}" for kind in
                     ("data", "state", "lease", "deltas", "seq", "log", "history", "late"))

    def run(self, run: int) -> str:
        return f"{self.tag}:run:{run}"

    def wake(self, run: int) -> str:
        return f"{self.tag}:wake:{run}"


@dataclass(frozen=True)
class Snapshot:
    """The instance as one version saw it."""

    version: int
    doc: str
    names: set[str]
    op: str = ""  # the id of the write that produced this version, when it carried one


class Ops:
    """A list of writes for cas.lua, with their keys numbered as the script expects."""

    def __init__(self, state_key: str, data_key: str) -> None:
        self.keys: list[str] = [state_key, data_key]
        self.args: list[Any] = []
        self.reads = 0

    def _key(self, key: str) -> int:
        try:
            return self.keys.index(key) + 1
        except ValueError:
            self.keys.append(key)
            return len(self.keys)

    def add(self, op: str, key: str, *args: Any) -> Ops:
        self.args.extend((op, self._key(key), len(args), *args))
        if op in ("HMGET", "HKEYS"):
            self.reads += 1
        return self

    def hset(self, key: str, mapping: Mapping[str, Any]) -> Ops:
        if mapping:
            flat: list[Any] = []
            for k, v in mapping.items():
                flat.extend((k, v))
            self.add("HSET", key, *flat)
        return self


def _wrap(fn: Callable[[], T], what: str) -> T:
    try:
        return fn()
    except (RedisConnectionError, RedisTimeoutError, OSError) as exc:
        raise StoreUnavailable(f"Redis unreachable while {what}: {exc}") from exc


class RedisStore:
    """Instance data and run coordination in Redis.

    `url` takes redis://, rediss:// (TLS), unix:// and passwords/ACL users in the usual form;
    extra keyword arguments go to redis-py (ssl_ca_certs=..., socket_timeout=...).
    """

    def __init__(self, url: str = "redis://127.0.0.1:6379/0", *, prefix: str = "pc",
                 **redis_kwargs: Any) -> None:
        self.url = url
        self.prefix = prefix
        redis_kwargs.setdefault("socket_timeout", 10.0)
        redis_kwargs.setdefault("socket_connect_timeout", 5.0)
        redis_kwargs.setdefault("health_check_interval", 30)
        self._redis_kwargs = dict(redis_kwargs)
        # Typed as Any: redis-py's annotations cover str and bytes replies at once, and this
        # module (the only one talking to redis) decodes every reply itself.
        self.client: Any = redis.Redis.from_url(url, **redis_kwargs)
        # Blocking reads (BLPOP in wait()) carry their own timeout; redis-py 8's default socket
        # timeout would cut them off, so they use a pool without one.
        blocking = dict(redis_kwargs, socket_timeout=None)
        self.blocking: Any = redis.Redis.from_url(url, **blocking)
        self._cas = self.client.register_script(_script("cas.lua"))
        self._begin = self.client.register_script(_script("begin.lua"))

    def __repr__(self) -> str:
        return f"RedisStore({redact(self.url)!r}, prefix={self.prefix!r})"

    def keys(self, workflow: str, instance_id: str) -> Keys:
        return Keys(self.prefix, workflow, instance_id)

    @property
    def index_key(self) -> str:
        return f"{self.prefix}:index"

    def live_key(self, workflow: str, version: int) -> str:
        """The set of instances pinned to one workflow version (what blocks its retirement)."""
        return f"{self.prefix}:live:{workflow}:{version}"

    def live_instances(self, workflow: str, version: int) -> list[str]:
        got = _wrap(lambda: self.client.smembers(self.live_key(workflow, version)), "reading")
        return sorted(m.decode() for m in got)

    def record_late(self, k: Keys, name: str, raw: bytes, fields: Mapping[str, Any]) -> None:
        """Keep a datum that arrived after its instance was closed, apart from its data."""
        def go() -> None:
            pipe = self.client.pipeline(transaction=True)
            pipe.hset(k.late, name, raw)
            pipe.xadd(k.log, dict(fields), maxlen=1000, approximate=True)
            pipe.execute()

        _wrap(go, "recording late data")

    def async_client(self) -> Any:
        """A fresh asyncio client (use as `async with`), for waiting without blocking a thread."""
        import redis.asyncio

        kwargs = dict(self._redis_kwargs, socket_timeout=None)
        kwargs.pop("health_check_interval", None)
        return redis.asyncio.Redis.from_url(self.url, **kwargs)

    def ping(self) -> bool:
        return bool(_wrap(self.client.ping, "pinging"))

    def close(self) -> None:
        self.client.close()
        self.blocking.close()

    # -- the Store protocol (in-process executors) -----------------------------------------

    def write_data(self, workflow: str, instance_id: str, data: Mapping[str, bytes]) -> None:
        if data:
            k = self.keys(workflow, instance_id)
            _wrap(lambda: self.client.hset(k.data, mapping=dict(data)), "writing data")

    def read_run(self, k: Keys, run: int, names: Sequence[str]) -> dict[str, bytes]:
        """Values a run keeps apart (its transients and results)."""
        if not names:
            return {}
        values = _wrap(lambda: self.client.hmget(k.run(run), list(names)), "reading a run")
        return {n: v for n, v in zip(names, values, strict=True) if v is not None}

    def read_data(self, workflow: str, instance_id: str, names: Iterable[str]) -> dict[str, bytes]:
        names = list(names)
        if not names:
            return {}
        k = self.keys(workflow, instance_id)
        values = _wrap(lambda: self.client.hmget(k.data, names), "reading data")
        return {n: v for n, v in zip(names, values, strict=True) if v is not None}

    def data_names(self, workflow: str, instance_id: str) -> set[str]:
        k = self.keys(workflow, instance_id)
        return {n.decode() for n in _wrap(lambda: self.client.hkeys(k.data), "listing data")}

    def next_run(self, workflow: str, instance_id: str) -> int:
        k = self.keys(workflow, instance_id)
        return int(_wrap(lambda: self.client.incr(k.seq), "numbering a run"))

    # -- coordination primitives (distributed executor) -------------------------------------

    def snapshot(self, k: Keys, delta_id: str | None = None) -> tuple[Snapshot, int | None]:
        """The instance's version, doc and data names (and the run of `delta_id`, if applied)."""

        def go() -> tuple[Snapshot, int | None]:
            pipe = self.client.pipeline(transaction=True)
            pipe.hmget(k.state, "v", "doc")
            pipe.hkeys(k.data)
            if delta_id is not None:
                pipe.hget(k.deltas, delta_id)
            replies = pipe.execute()
            (v, doc), names = replies[0], replies[1]
            seen = replies[2] if delta_id is not None else None
            snap = Snapshot(int(v or 0), (doc or b"").decode(), {n.decode() for n in names})
            return snap, (int(seen) if seen is not None else None)

        return _wrap(go, "reading instance state")

    def cas(self, ops: Ops, expected: int) -> tuple[bool, Snapshot | list[Any]]:
        """Apply `ops` if the instance is still at `expected`. Returns (True, reads) or
        (False, the newer snapshot to recompute from)."""
        reply = _wrap(lambda: self._cas(keys=ops.keys, args=[expected, *ops.args]), "committing")
        if int(reply[0]) == 1:
            return True, list(reply[2])
        doc = reply[2].decode() if isinstance(reply[2], bytes) else reply[2]
        op = reply[4].decode() if isinstance(reply[4], bytes) else reply[4]
        return False, Snapshot(int(reply[1]), doc, {n.decode() for n in reply[3]}, op)

    def begin(
        self, k: Keys, field: str, token: int, lease_value: str, claim: str,
        data_names: Sequence[str], run_names: Sequence[str], run: int,
    ) -> tuple[str, Snapshot | None, dict[str, bytes]]:
        """Claim a queued attempt and load its inputs: (status, snapshot, name -> raw).
        Idempotent for one claim id, so a caller whose reply was lost may simply ask again."""
        reply = _wrap(
            lambda: self._begin(
                keys=[k.state, k.data, k.lease, k.run(run)],
                args=[field, token, lease_value, claim, len(data_names), *data_names,
                      *run_names],
            ),
            "starting a builder",
        )
        status = reply[0].decode() if isinstance(reply[0], bytes) else reply[0]
        if status != "ok":
            return status, None, {}
        snap = Snapshot(int(reply[1]), reply[2].decode(), {n.decode() for n in reply[3]})
        raw = {n: v for n, v in zip(data_names, reply[4], strict=True) if v is not None}
        raw.update({n: v for n, v in zip(run_names, reply[5], strict=True) if v is not None})
        return status, snap, raw

    def leases(self, k: Keys) -> dict[str, str]:
        got = _wrap(lambda: self.client.hgetall(k.lease), "reading leases")
        return {f.decode(): v.decode() for f, v in got.items()}

    def due(self, now: float, limit: int) -> list[str]:
        got = _wrap(
            lambda: self.client.zrangebyscore(self.index_key, "-inf", now, start=0, num=limit),
            "scanning the index",
        )
        return [m.decode() for m in got]

    def reschedule(self, member: str, when: float) -> None:
        _wrap(lambda: self.client.zadd(self.index_key, {member: when}, xx=True), "rescheduling")

    def run_outcome(self, k: Keys, run: int) -> tuple[bytes | None, dict[str, bytes]]:
        """The settled outcome of a run and the data it produced, if it has settled."""
        got = _wrap(lambda: self.client.hgetall(k.run(run)), "reading a run")
        outcome = got.pop(b"_outcome", None)
        return outcome, {f.decode(): v for f, v in got.items() if not f.startswith(b"_")}

    def wait_wake(self, k: Keys, run: int, timeout: float) -> bool:
        """Block until run `run` signals it settled, or `timeout` passes; never busy-polls."""
        key = k.wake(run)

        def go() -> bool:
            # Rotating the list onto itself takes the token without removing it: every waiter
            # on the run wakes, and one that comes after the run settled returns at once.
            got = self.blocking.blmove(key, key, max(timeout, 0.01), "LEFT", "RIGHT")
            return got is not None

        return _wrap(go, "waiting for a run")

    def history(self, k: Keys, limit: int = 50) -> list[bytes]:
        return list(_wrap(lambda: self.client.lrange(k.history, 0, limit - 1), "reading history"))

    def log(self, k: Keys, count: int = 500) -> list[tuple[bytes, dict[bytes, bytes]]]:
        return list(_wrap(lambda: self.client.xrange(k.log, count=count), "reading the log"))


def retry_unavailable(fn: Callable[[], T], *, seconds: float = 30.0) -> T:
    """Call `fn`, retrying StoreUnavailable with backoff for up to `seconds`.

    Used on the commit path: a builder's work is not thrown away because Redis restarted.
    """
    deadline = time.monotonic() + seconds
    delay = 0.05
    while True:
        try:
            return fn()
        except StoreUnavailable:
            if time.monotonic() >= deadline:
                raise
            time.sleep(delay)
            delay = min(delay * 2, 1.0)


__all__ = ["Keys", "Ops", "RedisError", "RedisStore", "Snapshot", "redact", "retry_unavailable"]
