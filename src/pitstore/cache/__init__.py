"""The content-addressed compute cache (DESIGN 3.1)."""

from pitstore.cache.core import CachedCompute, ComputeCache, WarmReport
from pitstore.cache.keys import CacheKey, cache_key

__all__ = ["CacheKey", "CachedCompute", "ComputeCache", "WarmReport", "cache_key"]
