"""Pure array core: geometry, preprocessing, FBP, splits and metrics (NumPy/CuPy, no I/O)."""
