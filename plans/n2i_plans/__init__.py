"""Bluesky plans and ophyd-async devices that drive the n2i-stream service."""
