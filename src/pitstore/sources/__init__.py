"""Where bars come from and how they are kept: ingest, bar snapshots and their segments, resampling, the
spacing checks, and the import of older in-house HDF5 stores (DESIGN §3.1)."""
