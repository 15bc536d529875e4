"""The offline tier (DESIGN §3.3): feature entries and their files, backfills that write them, compaction,
and the point-in-time reads over them (`get_historical`, `read`) with their pruning."""
