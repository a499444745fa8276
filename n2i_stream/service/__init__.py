"""The live service: owns sockets, workers, lifecycle and the scan state machine."""
