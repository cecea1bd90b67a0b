"""Monitoring: Prometheus metrics, request records, the admin console's data."""
