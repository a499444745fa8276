"""Learning code (torch): networks, Noise2Inverse training and inference."""
