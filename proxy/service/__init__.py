"""The service around the run path: auth, limits, health, metrics, timing, errors."""
