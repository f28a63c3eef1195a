"""How dispatches are packed into broker messages (chunks.py): pure."""

from __future__ import annotations

import pytest

import polaris_celery as pc
from polaris_celery.chunks import SPREAD, pack
from polaris_celery.instance import Dispatch, Settings


def _ds(n: int, run: int = 1, countdown: float = 0.0) -> list[Dispatch]:
    return [Dispatch("wf", "i", run, f"B{k}", 1, countdown) for k in range(n)]


def test_few_dispatches_go_one_per_message() -> None:
    assert pack(_ds(SPREAD), 8, lambda d: None) == [[d] for d in _ds(SPREAD)]


def test_a_wide_fan_out_keeps_at_least_spread_messages_of_at_most_most() -> None:
    for n, most in ((SPREAD + 1, 8), (200, 8), (1000, 8), (1000, 3)):
        out = pack(_ds(n), most, lambda d: None)
        assert [d for m in out for d in m] == _ds(n)  # each once, in order
        assert max(len(m) for m in out) <= most
        assert len(out) >= min(SPREAD, n)


def test_only_one_run_on_one_channel_shares_a_message() -> None:
    ds = _ds(40) + _ds(40, run=2) + _ds(40, countdown=1.0)
    out = pack(ds, 8, lambda d: int(d.builder[1:]) % 2)  # two queues
    for m in out:
        assert len({(d.run, int(d.builder[1:]) % 2, d.countdown) for d in m}) == 1
    assert all(len(m) == 1 for m in out if m[0].countdown)
    assert pack(_ds(200), 1, lambda d: None) == [[d] for d in _ds(200)]


def test_dispatch_chunk_is_checked() -> None:
    for bad in (0, -1, 1.5, True, "8"):
        with pytest.raises(pc.ConfigurationError, match="dispatch_chunk"):
            Settings(dispatch_chunk=bad)  # type: ignore[arg-type]


def test_pack_spill_is_checked() -> None:
    for bad in (-1, True, "0.5", None):
        with pytest.raises(pc.ConfigurationError, match="pack_spill"):
            Settings(pack_spill=bad)  # type: ignore[arg-type]
    assert Settings(pack_spill=0).pack_spill == 0
