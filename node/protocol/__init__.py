"""Sans-I/O consensus core: no asyncio, sockets, clock or disk."""
