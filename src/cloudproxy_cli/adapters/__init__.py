"""Adapters: the I/O edges (state file, providers, prober) behind the core's ports."""
