"""aiohttp node: register service, proposer gateway, metrics."""
