"""Property-based fuzzing of configuration, command line, state files and local inventory."""
