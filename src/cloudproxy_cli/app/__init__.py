"""The shell: runs the core against the adapters and reports results."""
