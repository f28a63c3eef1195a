"""Deploying a new version of a workflow while instances of the old one are in flight."""

from __future__ import annotations

import uuid

import pytest

import polaris_celery as pc

from .apps import versioned_app as shop
from .workers import worker_process


def test_two_code_versions_side_by_side(redis_server):
    broker = f"redis://127.0.0.1:{redis_server.port}/4"
    base = {"POLARIS_REDIS_URL": redis_server.url, "POLARIS_BROKER_URL": broker}
    old_producer = shop.build(redis_server.url, broker, [1])
    new_producer = shop.build(redis_server.url, broker, [1, 2])
    tag = uuid.uuid4().hex[:6]
    with worker_process("tests.apps.versioned_app", {**base, "POLARIS_VERSIONS": "1"},
                        name="old", concurrency=1):
        # Before the deploy: instances start on version 1 and pause for a confirmation.
        old_ids = [f"old-{tag}-{i}" for i in range(3)]
        for iid in old_ids:
            r = old_producer.submit_delta("shop", iid, shop.Order(amount=100)).wait(15)
            assert r.get(shop.Quoted) == shop.Quoted(price=100.0, version=1)

        with worker_process("tests.apps.versioned_app", {**base, "POLARIS_VERSIONS": "1,2"},
                            name="new", concurrency=1):
            # The deploy: new code beside old code. New instances run on version 2 even though
            # the old worker (which has only version 1) takes some of their messages.
            new_ids = [f"new-{tag}-{i}" for i in range(6)]
            for iid in new_ids:
                r = new_producer.submit_delta("shop", iid, shop.Order(amount=100)).wait(20)
                assert r.get(shop.Quoted) == shop.Quoted(price=120.0, version=2)
            # Version 1 cannot be retired while its instances are in flight ...
            with pytest.raises(pc.VersionInUse) as info:
                new_producer.retire("shop", 1)
            assert sorted(info.value.instances) == sorted(old_ids)
            # ... and they finish on the version they started with, on either worker.
            for iid in old_ids:
                r = new_producer.submit_delta("shop", iid, shop.Confirm()).wait(20)
                assert r.completed and r.get(shop.Done).version == 1
                assert r.get(shop.Done).price == 100.0
            for iid in new_ids:
                r = new_producer.submit_delta("shop", iid, shop.Confirm()).wait(20)
                done = r.get(shop.Done)
                assert r.completed and done.version == 2 and done.worker_versions == "1,2"
    # Nothing runs on version 1 any more: it can be retired.
    new_producer.retire("shop", 1)
    assert new_producer.registry.versions("shop") == [2]
    # A completed old instance that gets a new delta moves to the newest version (no worker
    # runs now, so only the pinning is checked).
    new_producer.submit_delta("shop", old_ids[0], shop.Order(amount=10))
    assert old_ids[0] in new_producer.coordinator.store.live_instances("shop", 2)


def test_a_message_handed_on_during_a_deploy_is_never_dropped(redis_server):
    """Issue 10 case 14: a worker lacking the instance's version hands its message on, hop
    after hop, for as long as it takes (Celery's retry would stop after 3 hops by default);
    re-sends are off (dispatch_timeout 300 s), so only the hand-off can deliver it."""
    broker = f"redis://127.0.0.1:{redis_server.port}/5"
    base = {"POLARIS_REDIS_URL": redis_server.url, "POLARIS_BROKER_URL": broker,
            "POLARIS_DISPATCH_TIMEOUT": "300"}
    producer = shop.build(redis_server.url, broker, [1, 2], dispatch_timeout=300)
    iid = f"deploy-{uuid.uuid4().hex[:6]}"
    with worker_process("tests.apps.versioned_app", {**base, "POLARIS_VERSIONS": "1"},
                        name="old-only", concurrency=1) as old:
        handle = producer.submit_delta("shop", iid, shop.Order(amount=100))
        with pytest.raises(pc.WaitTimeout):
            handle.wait(6)  # five or more hops between old workers
        assert old.poll() is None
        with worker_process("tests.apps.versioned_app", {**base, "POLARIS_VERSIONS": "1,2"},
                            name="new-too", concurrency=1):
            r = handle.wait(15)
    assert r.get(shop.Quoted) == shop.Quoted(price=120.0, version=2)


def test_registering_versions_and_picking_the_newest(memory_registry):
    reg = pc.Registry(pc.MemoryStore())
    g1 = reg.register("shop", shop._builders(1, 1.0), version=1)
    g2 = reg.register("shop", shop._builders(2, 1.2), version=2)
    assert reg.graph("shop") is g2 and reg.graph("shop", 1) is g1
    assert reg.versions("shop") == [1, 2]
    with pytest.raises(pc.UnknownWorkflow, match="v3"):
        reg.graph("shop", 3)
    with pytest.raises(pc.InvalidInput, match="version"):
        reg.register("shop", shop._builders(1, 1.0), version=0)
