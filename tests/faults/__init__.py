"""Fault injection: provider calls, state writes and SIGKILL, then recovery over several runs."""
