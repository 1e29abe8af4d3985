"""Property-based fuzzing: configuration, command line, state files, local inventory and
provider responses: what no well-behaved peer sends."""
