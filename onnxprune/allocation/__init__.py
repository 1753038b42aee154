"""Allocation: per-group removal counts (uniform, global, sensitivity, utilization, redundancy), the order
check, the latency search, and unit selection."""
