"""DiffPerformer's refinement: the implicit video representation on hash grids and its re-noise / re-denoise loop."""
