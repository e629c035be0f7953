"""VMs: the record (receipt), lifecycle (new, delete, snapshot), runtime (start, stop, console), bases and
the NoCloud seed."""
