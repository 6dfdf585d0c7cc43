"""Pose guidance into the noisy latent (VividPose's light encoders ending in zero convs)."""
