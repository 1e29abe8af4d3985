"""The provider contract, run over every adapter and the engine's fake provider."""
