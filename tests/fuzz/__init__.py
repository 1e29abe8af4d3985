"""Property-based tests that feed the tool what no well-behaved peer sends."""
