"""Measuring one server: the workload, the load generator, per-request metrics, the SLO and goodput."""
