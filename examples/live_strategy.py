"""A live moving-average crossover through the pitstore HTTP service, with the async client.

Each bar it asks the service for the standard features of 50 symbols in one call and goes long a symbol while
its 20-bar average is above its 60-bar average: ``mom_N = close / SMA_N - 1``, so ``SMA_20 / SMA_60 =
(1 + mom_60d) / (1 + mom_20d)``. When the service cannot answer (restarted, down), that bar is skipped and
positions are held: it never trades on numbers it did not get. At the end it prints the client metrics.

    pitstore demo                                    # a store of synthetic daily bars (S0000, S0001, ...)
    pitstore serve --root ./pitstore-data/demo &
    python examples/live_strategy.py --bars 100      # restart the service meanwhile: the loop keeps going

The demo's bars end years ago, so its vectors are all ``stale`` (values null): the strategy says so and makes no
decision, as it should. Point it at a store kept current (``pitstore ingest`` / ``POST /v1/push``) to trade.
"""

from __future__ import annotations

import argparse
import asyncio
import json

from pitstore.client import AsyncClient, FeatureCache, Resilience
from pitstore.errors import BackendUnavailableError


def crossover(values: dict[str, float | None]) -> bool | None:
    """Long (True) while SMA_20 > SMA_60; None when a value is missing (stale or unknown): no decision."""
    fast, slow = values.get("mom_20d"), values.get("mom_60d")
    if fast is None or slow is None:
        return None
    return (1 + slow) / (1 + fast) > 1


async def run(url: str, api_key: str | None, symbols: list[str], bars: int, interval: float) -> dict[str, object]:
    positions: dict[str, bool] = {}
    skipped = trades = 0
    resilience = Resilience(timeout=1.0, breaker_failures=3, breaker_cooldown=2.0)
    # The cache holds a vector 1 s at most, and never past its freshness (the TTL the service publishes).
    async with AsyncClient(url, api_key=api_key, resilience=resilience, cache=FeatureCache(ttl=1.0)) as fs:
        for bar in range(bars):
            try:
                vectors = await fs.get_online(symbols, ["daily_core:mom_20d", "daily_core:mom_60d"])
            except BackendUnavailableError as exc:
                skipped += 1
                print(f"bar {bar}: service unavailable, holding positions ({exc})")
            else:
                for v in vectors:
                    long = crossover(v.values)
                    if long is not None and long != positions.get(v.symbol, False):
                        positions[v.symbol] = long
                        trades += 1
                unknown = sum(v.status not in ("ok", "fallback") for v in vectors)
                print(f"bar {bar}: {sum(positions.values())} long of {len(symbols)}, {trades} trades so far"
                      + (f", {unknown} without a fresh vector (no decision)" if unknown else ""))
            await asyncio.sleep(interval)  # the bar clock of this example, not a synchronisation
        return {"bars": bars, "skipped": skipped, "trades": trades, "client": fs.metrics()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--url", default="http://127.0.0.1:8000")
    parser.add_argument("--api-key", default=None)
    parser.add_argument("--symbols", type=int, default=50, help="S0000 ... of the demo store")
    parser.add_argument("--bars", type=int, default=30)
    parser.add_argument("--interval", type=float, default=0.2, help="seconds between bars")
    args = parser.parse_args()
    symbols = [f"S{i:04d}" for i in range(args.symbols)]
    print(json.dumps(asyncio.run(run(args.url, args.api_key, symbols, args.bars, args.interval)), indent=1))


if __name__ == "__main__":
    main()
