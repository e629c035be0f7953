"""Reliability campaigns: crash, concurrency, faults, hostile input, bad arguments, security."""
