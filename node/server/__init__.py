"""The aiohttp node: the app that mounts the acceptor and the gateway, /metrics, health, main."""
