"""Request metrics kept in batches are written exactly: the same counts, sums and buckets as one ``observe`` per
request. One process writes them when read (or every FLUSH_S); with several workers, at the end of each turn."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry, Histogram

from pitstore.server import metrics


def _samples(name: str, label: str) -> dict[tuple[str, str], float]:
    return {(s.name, s.labels.get("le", "")): s.value for family in metrics.LATENCY.collect()
            for s in family.samples if s.labels.get("endpoint") == label and s.name.startswith(name)}


def _requests(endpoint: str) -> dict[str, float]:
    return {s.labels["status"]: s.value for family in metrics.REQUESTS.collect() for s in family.samples
            if s.labels.get("endpoint") == endpoint and s.name.endswith("_total")}


@pytest.mark.parametrize("workers", ["one", "several"])
def test_batched_request_metrics_equal_one_observe_each(workers: str, monkeypatch: pytest.MonkeyPatch,
                                                        tmp_path: Path) -> None:
    seconds = [0.0001, 0.0005, 0.0005001, 0.003, 0.003, 0.7, 11.0, 0.0]
    endpoint = f"/test/batched/{workers}"
    if workers == "several":
        monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", str(tmp_path))
    else:
        monkeypatch.delenv("PROMETHEUS_MULTIPROC_DIR", raising=False)

    async def serve() -> None:
        for s in seconds:  # one turn of the loop: kept
            metrics.observe_request(endpoint, "GET", 200, s)
            metrics.count_online(["ok", "stale", "ok"], f"test-batched-{workers}")
        await asyncio.sleep(0)  # a turn of the loop: with several workers the scheduled flush runs

    asyncio.run(serve())
    asyncio.run(serve())  # a second loop (the first closed): its updates are written too
    if workers == "one":
        assert _requests(endpoint) == {}  # not written yet: a reader flushes first
        metrics.flush()
    reference = Histogram("reference_seconds", "", buckets=metrics._LATENCY_BUCKETS, registry=CollectorRegistry())
    for s in seconds * 2:
        reference.observe(s)
    want = {(s.name.replace("reference_seconds", "pitstore_http_request_seconds"), s.labels.get("le", "")): s.value
            for family in reference.collect() for s in family.samples if not s.name.endswith("_created")}
    got = {k: v for k, v in _samples("pitstore_http_request_seconds", endpoint).items()
           if not k[0].endswith("_created")}
    assert got == want
    assert _requests(endpoint) == {"200": len(seconds) * 2}
    online = {s.labels["status"]: s.value for family in metrics.ONLINE.collect() for s in family.samples
              if s.labels.get("path") == f"test-batched-{workers}" and s.name.endswith("_total")}
    assert online == {"ok": 4 * len(seconds), "stale": 2 * len(seconds)}
