"""Reading a server's Prometheus metrics over HTTP, as a scraper would (tests' helper)."""
from __future__ import annotations

import socket
import time
import urllib.request
from typing import Callable, Dict, Optional, Tuple

from prometheus_client.parser import text_string_to_metric_families

#: (sample name, sorted label items) -> value
Samples = Dict[Tuple[str, Tuple[Tuple[str, str], ...]], float]


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port free on ``host`` now (another process may take it before it is used)."""
    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def scrape(url: str, timeout: float = 10.0) -> Tuple[Samples, Dict[str, str]]:
    """The samples at ``url``, and each family's type by name."""
    with urllib.request.urlopen(url, timeout=timeout) as reply:
        assert reply.status == 200
        text = reply.read().decode("utf-8")
    samples: Samples = {}
    types: Dict[str, str] = {}
    for family in text_string_to_metric_families(text):
        types[family.name] = family.type
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples, types


def value(samples: Samples, name: str, **labels: str) -> float:
    """One sample's value, 0 when absent (a counter not incremented yet)."""
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def scrape_until(url: str, ready: Callable[[Samples], bool],
                 timeout: float = 15.0) -> Optional[Samples]:
    """Scrape until ``ready(samples)`` holds (figures the loop publishes lag a little);
    the last samples when it does, None when ``timeout`` seconds passed first."""
    deadline = time.monotonic() + timeout
    while True:
        samples, _ = scrape(url)
        if ready(samples):
            return samples
        if time.monotonic() >= deadline:
            return None
        time.sleep(0.05)
