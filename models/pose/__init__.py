"""Poses: the pose sequence type, extractors (DWPose, MediaPipe, DensePose), faces, retargeting to the reference's proportions."""
