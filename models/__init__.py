"""ComfyUI-Performer model library.

Plain PyTorch + diffusers code: weight loading, pose/body layers, attention processors,
samplers, editing, implicit video representation, training.  Nothing in this package
imports ComfyUI, so it can be used and tested on its own; ``nodes/`` is the thin glue.
"""
