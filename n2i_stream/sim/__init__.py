"""Simulated beamline: analytic phantoms and a dynamic-scan simulator (part of the package)."""
