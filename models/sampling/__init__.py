"""Reference-conditioned video samplers over a loaded backbone, and sliding context windows."""
