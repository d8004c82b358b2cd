"""A cluster on this machine: spec to local configuration, the data directory and discovery,
the member launcher and the `graven up` supervisor.
"""
