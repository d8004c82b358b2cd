"""HTTP plumbing the route modules share: typed app keys, JSON errors and I/O, validation."""
