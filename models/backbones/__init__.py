"""Loading the backbones people have on disk, offline: SD1.5/AnimateDiff and SVD single files and folders, layouts, safe weight reading."""
