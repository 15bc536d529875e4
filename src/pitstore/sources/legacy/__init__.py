"""Imports from the older in-house stores (``pitstore[hdf5]``)."""
