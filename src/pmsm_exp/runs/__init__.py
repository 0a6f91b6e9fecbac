"""Run bookkeeping: metrics.json records, run folders and resumption, checkpoints, which overrides
matter, W&B tracking, and the report that rebuilds paper-shaped tables from disk."""
