"""The attention maths (once, on q/k/v tensors) and the diffusers processors over it: causal reference attention (SCD), decoupled cross-attention for identity (VividPose)."""
