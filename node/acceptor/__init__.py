"""The acceptor: the register service (read_many/write_many over the store) and its HTTP routes."""
