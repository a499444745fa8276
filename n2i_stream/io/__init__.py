"""I/O adapters at the edges: HDF5 files (and, later, ZMQ sockets)."""
