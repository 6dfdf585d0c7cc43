"""The 3D body: SMPL-X loading (no pickle) and the embedded default body, fitting to keypoints, renders and the 3D-aware human flow."""
