"""The synthetic performer with full ground truth, and the video metrics."""
