"""pitstore.client: the HTTP service from Python, resilient (pooling, retries, a circuit breaker, a local
fallback), with a client-side cache and metrics. Needs the ``client`` extra: ``pip install 'pitstore[client]'``.

>>> from pitstore.client import Client
>>> with Client("http://127.0.0.1:8000") as fs:  # doctest: +SKIP
...     fs.get_online(["AAPL", "MSFT"], "daily_core")
"""

from pitstore.client._calls import SOURCE_COLUMN
from pitstore.client._http import Resilience
from pitstore.client.async_client import AsyncClient
from pitstore.client.breaker import CircuitBreaker
from pitstore.client.cache import FeatureCache
from pitstore.client.sync_client import Client

__all__ = ["SOURCE_COLUMN", "AsyncClient", "CircuitBreaker", "Client", "FeatureCache", "Resilience"]
