"""The client API of a node: the gateway (its proposer runtime's host), forwarding to a key's
leader, the decided-value cache and the /v1/decisions routes.
"""
