"""The proposer's I/O: channels and transports to acceptors, reachability, proposer metrics,
and the loops that drive the core's Proposer (drive, fast path, peek).
"""
