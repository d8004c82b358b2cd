"""The client API of a node: the proposer runtime per key, forwarding to the home member,
the decided-value cache and the /v1/decisions routes.
"""
