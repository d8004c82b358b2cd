"""Graven data plane: sans-I/O core, simulator, node server, storage, client and CLI."""
