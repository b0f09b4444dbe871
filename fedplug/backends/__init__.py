"""Backends: how the clients of a round are run (sequential is the reference semantics)."""
