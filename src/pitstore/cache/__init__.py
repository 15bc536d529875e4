"""The content-addressed compute cache (DESIGN 3.1)."""

from pitstore.cache.core import ComputeCache, WarmReport
from pitstore.cache.keys import CacheKey, cache_key

__all__ = ["CacheKey", "ComputeCache", "WarmReport", "cache_key"]
