"""The Redis store: the only module that imports redis. The key layout is in `layout.py`.

All writes of the distributed path go through one Lua script (`cas.lua`) that applies a list of
writes only if the instance's version is still the one they were computed from.
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from importlib import resources
from typing import Any, TypeVar
from urllib.parse import urlsplit, urlunsplit

import redis
import redis.asyncio
import redis.asyncio.cluster
import redis.asyncio.sentinel
from redis.cluster import ClusterNode, RedisCluster
from redis.exceptions import ClusterDownError, RedisClusterException, RedisError, TryAgainError
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError
from redis.sentinel import Sentinel

from ..errors import ConfigurationError, StoreUnavailable
from ..layout import WHOLE, Effects, Keys, Ops, Snapshot, Want
from .listing import Listings
from .shared import RetiringError, Shared

T = TypeVar("T")
log = logging.getLogger("polaris_celery")


def redact(url: str) -> str:
    """`redis://user:secret@host` -> `redis://user:***@host`, for logs and reprs."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.rsplit("@", 1)
    user = parts.username or ""
    return urlunsplit(parts._replace(netloc=f"{user}:***@{netloc[-1]}"))


def _auth(url: str) -> dict[str, Any]:
    parts = urlsplit(url)
    got: dict[str, Any] = {}
    if parts.username:
        got["username"] = parts.username
    if parts.password:
        got["password"] = parts.password
    if parts.scheme.startswith("rediss"):
        got["ssl"] = True
    return got


def connect(url: str, kwargs: dict[str, Any]) -> Any:
    """A client for `url`: a cluster client for `redis+cluster://h:p[,h:p...]` (or
    `rediss+cluster://`), and for a `redis://` URL that names a node of a cluster (detected
    from INFO); a plain client otherwise."""
    parts = urlsplit(url)
    if parts.scheme.endswith("+sentinel"):
        return _sentinel(url, kwargs)
    if parts.scheme.endswith("+cluster"):
        hosts = parts.netloc.rsplit("@", 1)[-1].split(",")
        nodes = [_node(h) for h in hosts]
        return RedisCluster(startup_nodes=nodes, **_auth(url), **_cluster_kwargs(kwargs))
    client = redis.Redis.from_url(url, **kwargs)
    if parts.scheme in ("redis", "rediss"):
        try:
            enabled = client.info("cluster").get("cluster_enabled") == 1
        except RedisError:
            enabled = False  # unreachable now: the first command says so, clearly
        if enabled:
            client.close()
            return RedisCluster(host=parts.hostname or "127.0.0.1", port=parts.port or 6379,
                                **_auth(url), **_cluster_kwargs(kwargs))
    return client


def _sentinel(url: str, kwargs: dict[str, Any], asyncio: bool = False) -> Any:
    """`redis+sentinel://h:p[,h:p...]/service[/db]`: the primary the Sentinels name, followed
    through failovers (redis-py's Sentinel support)."""
    parts = urlsplit(url)
    hosts = parts.netloc.rsplit("@", 1)[-1].split(",")
    path = [p for p in parts.path.split("/") if p]
    if not path:
        raise ConfigurationError(f"{redact(url)}: name the Sentinel service, e.g. "
                                 "redis+sentinel://host:26379/mymaster")
    sentinels = [(h.rpartition(":")[0], int(h.rpartition(":")[2])) for h in hosts]
    db = int(path[1]) if len(path) > 1 else 0
    conn = {k: v for k, v in kwargs.items() if k != "health_check_interval"}
    sentinel: Any = (redis.asyncio.sentinel.Sentinel if asyncio else Sentinel)(
        sentinels, socket_timeout=conn.get("socket_timeout"))
    return sentinel.master_for(path[0], db=db, **_auth(url), **conn)


def _node(hostport: str) -> Any:
    host, _, port = hostport.rpartition(":")
    return ClusterNode(host, int(port))  # type: ignore[no-untyped-call]


def _cluster_kwargs(kwargs: dict[str, Any]) -> dict[str, Any]:
    # A cluster client has no database other than 0 and keeps its own health checks.
    return {k: v for k, v in kwargs.items() if k not in ("db", "health_check_interval")}


def _script(name: str) -> str:
    return resources.files("polaris_celery.stores").joinpath(name).read_text()


def _wrap(fn: Callable[[], T], what: str) -> T:
    try:
        return fn()
    except (RedisConnectionError, RedisTimeoutError, OSError, ClusterDownError,
            RedisClusterException, TryAgainError, RetiringError) as exc:
        raise StoreUnavailable(f"Redis unreachable while {what}: {exc}") from exc


class RedisStore:
    """Instance data and run coordination in Redis.

    `url` takes redis://, rediss:// (TLS), unix://, redis+cluster://h:p[,h:p...] and
    passwords/ACL users in the usual form; extra keyword arguments go to redis-py
    (ssl_ca_certs=..., socket_timeout=...).

    `min_replicas_ack`: every change to an instance returns only once that many replicas have
    it (Redis `WAIT`, up to `replica_ack_timeout` seconds; fewer raise StoreUnavailable, and the
    caller's retry finds the change applied). Redis replicates asynchronously, so without it a
    failover can undo a change the primary acknowledged.
    """

    def __init__(self, url: str = "redis://127.0.0.1:6379/0", *, prefix: str = "pc",
                 min_replicas_ack: int = 0, replica_ack_timeout: float = 1.0,
                 **redis_kwargs: Any) -> None:
        self.url = url
        self.prefix = prefix
        self.min_replicas_ack = min_replicas_ack
        self.replica_ack_timeout = replica_ack_timeout
        redis_kwargs.setdefault("socket_timeout", 10.0)
        redis_kwargs.setdefault("socket_connect_timeout", 5.0)
        redis_kwargs.setdefault("health_check_interval", 30)
        self._redis_kwargs = dict(redis_kwargs)
        # Typed as Any: redis-py's annotations cover str and bytes replies at once, and this
        # module (the only one talking to redis) decodes every reply itself.
        self.client: Any = connect(url, redis_kwargs)
        self.cluster = isinstance(self.client, RedisCluster)
        # Blocking reads (BLPOP in wait()) carry their own timeout; redis-py 8's default socket
        # timeout would cut them off, so they use a pool without one.
        self.blocking: Any = connect(url, dict(redis_kwargs, socket_timeout=None))
        self.shared = Shared(self.client, prefix)
        self.listings = Listings(self.client, prefix)
        self._cas = self.client.register_script(_script("cas.lua"))
        self._begin = self.client.register_script(_script("begin.lua"))
        self._view = self.client.register_script(_script("view.lua"))

    def __repr__(self) -> str:
        return f"RedisStore({redact(self.url)!r}, prefix={self.prefix!r})"

    def keys(self, workflow: str, instance_id: str) -> Keys:
        return Keys(self.prefix, workflow, instance_id)

    def live_instances(self, workflow: str, version: int) -> list[str]:
        return _wrap(lambda: self.shared.live_instances(workflow, version), "reading")

    def drop_live(self, workflow: str, version: int, k: Keys) -> None:
        _wrap(lambda: self.shared.drop_live(workflow, version, k.instance_id, k.member),
              "unpinning")

    def begin_retiring(self, workflow: str, version: int, token: str) -> None:
        """Mark a retirement of `version` pending (for at most PENDING_MS)."""
        _wrap(lambda: self.shared.begin_retiring(workflow, version, token), "retiring")

    def end_retiring(self, workflow: str, version: int, token: str, retired: bool) -> bool:
        """End it, marking the version retired if asked; False if the mark ran out first."""
        return _wrap(lambda: self.shared.end_retiring(workflow, version, token, retired),
                     "retiring")

    def index_score(self, k: Keys) -> float | None:
        """When the reconciler will next look at the instance (None: it does not watch it)."""
        return _wrap(lambda: self.shared.score(k.member), "reading the index")

    def async_client(self) -> Any:
        """A fresh asyncio client (use as `async with`), for waiting without blocking a thread."""

        kwargs = dict(self._redis_kwargs, socket_timeout=None)
        kwargs.pop("health_check_interval", None)
        if urlsplit(self.url).scheme.endswith("+sentinel"):
            return _sentinel(self.url, kwargs, asyncio=True)
        if self.cluster:
            nodes = [redis.asyncio.cluster.ClusterNode(n.host, n.port)
                     for n in self.client.get_primaries()]
            return redis.asyncio.cluster.RedisCluster(startup_nodes=nodes, **_auth(self.url),
                                                      **kwargs)
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

    def read_run(self, k: Keys, inc: str, run: int, names: Sequence[str]) -> dict[str, bytes]:
        """Values a run keeps apart (its transients and results)."""
        if not names:
            return {}
        values = _wrap(lambda: self.client.hmget(k.run(inc, run), list(names)), "reading a run")
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

    def view(self, k: Keys, want: Want = WHOLE, delta_id: str | None = None
             ) -> tuple[Snapshot, str | None]:
        """What `want` asks of the instance, at one version (view.lua), and what `delta_id`
        maps to if that delta was applied."""
        fields = sorted(want.fields)
        data = sorted(want.data)

        def go() -> tuple[Snapshot, str | None]:
            reply = self._view(keys=[k.state, k.data, k.deltas], args=[
                "1" if want.whole else "0", "1" if want.names else "0", delta_id or "",
                len(fields), *fields, *data])
            v, inc, doc, got, exists, names, seen = reply
            if want.whole:
                values = whole_fields(got)
                known: frozenset[str] | None = None
            else:
                values = {f: _text(x) for f, x in zip(fields, got, strict=True) if x is not None}
                known = frozenset(fields)
            snap = Snapshot(int(v or 0), _text(doc), _text(inc), values, known,
                            {d: bool(e) for d, e in zip(data, exists, strict=True)},
                            frozenset(_text(n) for n in names) if want.names else None)
            return snap, (_text(seen) or None) if delta_id is not None else None

        return _wrap(go, "reading instance state")

    def snapshot(self, k: Keys, delta_id: str | None = None) -> tuple[Snapshot, str | None]:
        """The instance's whole state (every field and data name); see `view` for less."""
        return self.view(k, WHOLE, delta_id)

    def cas(self, ops: Ops, expected: Snapshot, k: Keys, fx: Effects | None = None,
            seen: float | None = None, sleep: Callable[[float], None] = time.sleep
            ) -> tuple[str, Any]:
        """Apply `ops` if the instance is still at `expected` (version and incarnation), with
        `fx` on the shared keys (see stores/shared.py; `seen`: the index score a reconciler
        read before its look).

        Returns ("applied", reads), ("conflict", the newer version: read again and decide),
        ("done", None) when a ONCE mark shows this very write was applied before, or
        ("retired", version) when it would pin an instance to a retired version."""
        fx = fx or Effects()
        shared = self.shared
        retired = _wrap(lambda: shared.pin(fx, k.member, k.instance_id, sleep), "pinning")
        if retired is not None:
            return "retired", retired
        if self.cluster:
            _wrap(lambda: shared.before(fx, k.member), "touching the index")
        else:
            ops = ops.copy()
            shared.in_script(ops, fx, k.member, k.instance_id)
            self.listings.in_script(ops, fx.listing, k.workflow, k.instance_id,
                                    expected.version + 1)
        # Unfenced ops (a quiet commit) check what they depend on themselves.
        version = expected.version if ops.fenced else ""
        reply = _wrap(lambda: self._acked(
            k.state, lambda client: self._cas(keys=ops.keys, client=client,
                                              args=[version, expected.inc, *ops.args])),
            "committing")
        code = int(reply[0])
        if code in (1, 2) and self.cluster:
            _wrap(lambda: shared.after(fx, k.member, k.instance_id, seen), "settling the index")
            listing = fx.listing
            if listing is not None:
                try:
                    _wrap(lambda: self.listings.after(listing, k.workflow, k.instance_id,
                                                      expected.version + 1), "listing")
                except StoreUnavailable as exc:
                    # The step applied: its caller must hear so. The entry is put right when a
                    # page next reads it, or by `polaris reindex` (stores/listing.py).
                    log.warning("polaris: %s applied, but its listing entry was not written: "
                                "%s", k.member, exc)
        if code == 1:
            return "applied", list(reply[2])
        if code == 2:
            return "done", None
        return "conflict", int(reply[1])

    def _acked(self, key: str, script: Callable[[Any], Any]) -> Any:
        """Run `script` (on `key`'s node), then, with min_replicas_ack, WAIT on the very same
        connection: WAIT counts the replicas that have that connection's writes."""
        if not self.min_replicas_ack:
            return script(self.client)
        node = self.client.get_node_from_key(key).redis_connection if self.cluster \
            else self.client
        pipe = node.pipeline(transaction=False)
        script(pipe)
        pipe.execute_command("WAIT", self.min_replicas_ack,
                             int(self.replica_ack_timeout * 1000))
        reply, acked = pipe.execute()
        if int(acked) < self.min_replicas_ack:
            raise RedisConnectionError(f"the write reached {acked} of the "
                                       f"{self.min_replicas_ack} replicas asked for")
        return reply

    def begin(
        self, k: Keys, inc: str, field: str, token: int, lease_value: str, lease_ends: float,
        claim: str, data_names: Sequence[str], run_names: Sequence[str], run: int,
        fields: Sequence[str] = (), exists: Sequence[str] = (), whole: bool = False,
    ) -> tuple[str, Snapshot | None, dict[str, bytes]]:
        """Claim a queued attempt and load its inputs: (status, snapshot of the document and
        of the state `fields`, or of every field with `whole`, name -> raw).
        Idempotent for one claim id, so a caller whose reply was lost may simply ask again.
        The instance's next look comes forward to the running lease's end (in the script on a
        single node; just after it on a cluster)."""
        keys = [k.state, k.data, k.lease, k.run(inc, run)]
        if not self.cluster:
            keys.append(self.shared.index_of(k.member))
        reply = _wrap(
            lambda: self._begin(
                keys=keys,
                args=[field, token, lease_value, claim, inc, f"{lease_ends:.3f}", k.member,
                      len(data_names), 0 if whole else len(fields), len(exists),
                      "1" if whole else "0", *data_names, *(() if whole else fields), *exists,
                      *run_names],
            ),
            "starting a builder",
        )
        status = _text(reply[0])
        if status != "ok":
            return status, None, {}
        if self.cluster:
            _wrap(lambda: self.shared.touch(k.member, lease_ends), "touching the index")
        values, known = (whole_fields(reply[3]), None) if whole else (
            {f: _text(x) for f, x in zip(fields, reply[3], strict=True) if x is not None},
            frozenset(fields))
        snap = Snapshot(int(reply[1]), _text(reply[2]), inc, values, known,
                        {d: bool(x) for d, x in zip(exists, reply[6], strict=True)})
        raw = {n: v for n, v in zip(data_names, reply[4], strict=True) if v is not None}
        raw.update({n: v for n, v in zip(run_names, reply[5], strict=True) if v is not None})
        return status, snap, raw

    def leases(self, k: Keys) -> dict[str, str]:
        got = _wrap(lambda: self.client.hgetall(k.lease), "reading leases")
        return {f.decode(): v.decode() for f, v in got.items()}

    def due(self, now: float, limit: int, rng: random.Random) -> list[tuple[str, float]]:
        """Up to `limit` (instance, index score) due for a look by `now` (see Shared.due)."""
        return _wrap(lambda: self.shared.due(now, limit, rng), "scanning the index")

    def postpone(self, member: str, seen: float, when: float) -> None:
        """Look at `member` again at `when`, unless a step touched it since it was read."""
        _wrap(lambda: self.shared.settle(member, seen, when), "postponing")

    def run_outcome(self, k: Keys, inc: str, run: int) -> tuple[bytes | None, dict[str, bytes]]:
        """The settled outcome of a run and the data it produced, if it has settled."""
        got = _wrap(lambda: self.client.hgetall(k.run(inc, run)), "reading a run")
        outcome = got.pop(b"_outcome", None)
        return outcome, {f.decode(): v for f, v in got.items() if not f.startswith(b"_")}

    def wait_wake(self, k: Keys, inc: str, run: int, timeout: float) -> bool:
        """Block until the run signals it settled, or `timeout` passes; never busy-polls."""
        key = k.wake(inc, run)

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


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def whole_fields(flat: Sequence[bytes | str]) -> dict[str, str]:
    """An HGETALL reply of the state hash as a Snapshot's fields (v, inc and doc apart)."""
    text = [_text(x) for x in flat]
    return {f: x for f, x in zip(text[::2], text[1::2], strict=True)
            if f not in ("v", "inc", "doc")}


def retry_unavailable(fn: Callable[[], T], *, seconds: float = 30.0,
                      sleep: Callable[[float], None] = time.sleep) -> T:
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
            sleep(delay)
            delay = min(delay * 2, 1.0)


__all__ = ["Keys", "Ops", "RedisError", "RedisStore", "Snapshot", "redact", "retry_unavailable"]
