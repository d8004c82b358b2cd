"""The proposer's I/O: channels and transports to acceptors, reachability, proposer metrics,
and the pump that carries out the effects of the core's proposer runtime (``pump``).
"""
