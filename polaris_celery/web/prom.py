"""`/metrics` of the web view: Prometheus exposition read from Redis at each scrape.

Workers count attempts and runs (metrics.py); the web view adds what only a look at the whole
store tells: instances per workflow and status, and the instances in flight. Nothing is
counted in this process, so any number of web views can be scraped side by side.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import Any

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import GaugeMetricFamily

from ..metrics import PREFIX, InFlight
from .source import Source

log = logging.getLogger("polaris_celery")

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


class Instances:
    """`polaris_instances{workflow,status}`, counted from the store when scraped."""

    def __init__(self, source: Source) -> None:
        self.source = source

    def collect(self) -> Iterator[Any]:
        try:
            counts = self.source.counts()
        except Exception as exc:  # a scrape must answer even when Redis does not
            log.warning("polaris web: instance counts not read: %s", exc)
            return
        family = GaugeMetricFamily(f"{PREFIX}_instances",
                                   "Instances by workflow and status, read from the store.",
                                   labels=["workflow", "status"])
        for (workflow, status), n in sorted(counts.items()):
            family.add_metric([workflow, status], n)
        yield family


def registry_for(source: Source) -> CollectorRegistry:
    reg = CollectorRegistry(auto_describe=False)
    reg.register(Instances(source))
    reg.register(InFlight(source.store))
    return reg


def exposition(reg: CollectorRegistry) -> bytes:
    return bytes(generate_latest(reg))
