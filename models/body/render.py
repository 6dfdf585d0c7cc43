"""Headless body renders (pyrender) and the 3D-aware human flow.

Backend: pyrender offscreen with EGL (GPU machines and Mesa's software EGL here); OSMesa is used when EGL is
unavailable and ``PYOPENGL_PLATFORM=osmesa`` is set (needs PyOpenGL ≥ 3.1.10).  The platform is chosen before
OpenGL is first imported and never changed afterwards.  Only code paths that do not touch pyrender's
``Mesh.bounds`` / ``Scene.bounds`` (``np.infty``, gone in numpy 2) are used: every camera pose is explicit.

Conventions: inputs are vertices in OpenCV camera coordinates (see :mod:`.body`); the render camera is the
OpenGL one (y and z flipped).  Outputs:

* ``depth`` — z in the OpenCV camera (metres), 0 = background
* ``mask`` — depth > 0
* ``normal`` — camera-space normals in the OpenGL convention (x right, y up, z toward the viewer), RGB = n·½+½
  (the usual normal-map look: a surface facing the camera is (0.5, 0.5, 1))
* ``semantic`` — a fixed colour per body part (the joint with the largest skinning weight, grouped)
* ``face_id`` — the visible triangle per pixel (−1 = background), used by the flow

3D-aware human flow for frames n → n+1: each foreground pixel's surface point is found exactly (the ray through
the pixel centre hits the visible triangle; barycentric coordinates by Möller–Trumbore), carried to frame n+1
by the same barycentric combination of the triangle's new vertices, and projected.  ``valid`` keeps pixels
whose point is inside the image and not hidden at n+1 (its depth within ``occlusion_tol`` of the depth rendered
there).
"""
from __future__ import annotations

import os
from typing import Dict, Optional

import numpy as np

from ..errors import BadInputError

# part colours for the semantic map: groups of SMPL-X joints (index = joint with the largest skinning weight)
PART_OF_JOINT = {0: 0, 3: 1, 6: 1, 9: 1, 12: 2, 15: 3, 22: 3, 23: 3, 24: 3, 13: 4, 16: 4, 14: 5, 17: 5, 18: 6, 19: 7,
                 20: 8, 21: 9, 1: 10, 2: 11, 4: 12, 5: 13, 7: 14, 10: 14, 8: 15, 11: 15}
PART_COLOURS = np.array([
    [128, 64, 128], [200, 120, 60], [230, 200, 60], [250, 170, 160], [70, 130, 180], [180, 70, 130], [100, 200, 230],
    [230, 100, 200], [60, 220, 120], [220, 60, 120], [40, 90, 200], [200, 40, 90], [90, 160, 40], [160, 40, 40],
    [30, 120, 120], [120, 30, 120]], np.uint8)

# Champ's semantic map (docs/research/released_pose_models.md §1.4): each vertex coloured by its dominant SMPL joint
# (24 labels, SMPL's kinematic order), colour = cv2's viridis at 10·label, background black.  SMPL-X's first 22 joints
# are SMPL's; its jaw and eyes fall to SMPL's head (15) and its finger joints to SMPL's hand joints (22 left, 23 right).
CHAMP_SEMANTIC_COLOURS = np.array([
    [68, 1, 84], [71, 16, 99], [72, 29, 111], [71, 42, 122], [69, 55, 129], [65, 66, 135], [61, 78, 138], [56, 89, 140],
    [51, 99, 141], [46, 109, 142], [42, 118, 142], [39, 128, 142], [35, 137, 142], [32, 146, 140], [30, 156, 137],
    [33, 165, 133], [40, 174, 128], [53, 183, 121], [70, 192, 111], [90, 200, 100], [112, 207, 87], [137, 213, 72],
    [162, 218, 55], [189, 223, 38]], np.uint8)


def _platform() -> None:
    if "OpenGL" in __import__("sys").modules:
        return  # someone imported OpenGL already: keep their platform
    if not os.environ.get("DISPLAY") and "PYOPENGL_PLATFORM" not in os.environ:
        os.environ["PYOPENGL_PLATFORM"] = "egl"


class Renderer:
    """One offscreen renderer per size; reuse it across frames."""

    def __init__(self, width: int, height: int):
        if width <= 0 or height <= 0 or width > 8192 or height > 8192:
            raise BadInputError(f"Render size must be between 1 and 8192 pixels; got {width}×{height}.")
        _platform()
        import pyrender

        self.pyrender = pyrender
        try:
            self.r = pyrender.OffscreenRenderer(width, height)
        except Exception as e:  # noqa: BLE001
            raise BadInputError(f"Could not create a headless OpenGL context ({os.environ.get('PYOPENGL_PLATFORM')}): {e}. "
                                "On Linux install libegl1 + libgl1-mesa-dri (EGL) or libosmesa6 with PyOpenGL>=3.1.10 "
                                "and PYOPENGL_PLATFORM=osmesa.") from e
        self.width, self.height = width, height

    def close(self):
        self.r.delete()

    def _scene(self, camera, mesh):
        pr = self.pyrender
        scene = pr.Scene(bg_color=[0, 0, 0, 0], ambient_light=[1.0, 1.0, 1.0])
        scene.add(mesh)
        cam = pr.IntrinsicsCamera(fx=camera.fx, fy=camera.fy, cx=camera.cx, cy=camera.cy,
                                  znear=0.01, zfar=1000.0)
        scene.add(cam, pose=np.eye(4))
        return scene

    @staticmethod
    def _gl(v: np.ndarray) -> np.ndarray:
        return v * np.array([1.0, -1.0, -1.0], np.float32)

    def _render_colours(self, camera, verts, faces, colours_per_vertex=None, colours_per_face=None):
        import trimesh

        pr = self.pyrender
        if colours_per_face is not None:
            v = self._gl(verts)[faces.reshape(-1)]
            f = np.arange(len(v)).reshape(-1, 3)
            col = np.repeat(colours_per_face, 3, 0)
        else:
            v, f, col = self._gl(verts), faces, colours_per_vertex
        tm = trimesh.Trimesh(vertices=v, faces=f, vertex_colors=np.concatenate([col, np.full((len(col), 1), 255, np.uint8)], 1),
                             process=False)
        mesh = pr.Mesh.from_trimesh(tm, smooth=True)
        colour, depth = self.r.render(self._scene(camera, mesh), flags=pr.RenderFlags.FLAT)
        return colour, depth

    def render(self, camera, verts: np.ndarray, faces: np.ndarray, parts: Optional[np.ndarray] = None,
               kinds=("depth", "mask", "normal", "semantic", "face_id"), palette: np.ndarray = PART_COLOURS) -> Dict[str, np.ndarray]:
        """One frame: verts (V, 3) in OpenCV camera coordinates; camera sized like this renderer.  ``parts`` (labels per
        vertex) and ``palette`` (a colour per label) colour the semantic map."""
        import trimesh

        if (camera.width, camera.height) != (self.width, self.height):
            camera = camera.scaled(self.width, self.height)
        if not np.isfinite(verts).all():
            raise BadInputError("Body vertices contain NaN or infinite values.")
        out: Dict[str, np.ndarray] = {}
        depth = None
        if "normal" in kinds or "depth" in kinds or "mask" in kinds:
            n = trimesh.Trimesh(vertices=verts, faces=faces, process=False).vertex_normals
            n_gl = self._gl(np.asarray(n, np.float32))
            col = np.clip((n_gl * 0.5 + 0.5) * 255, 0, 255).round().astype(np.uint8)
            c, depth = self._render_colours(camera, verts, faces, colours_per_vertex=col)
            if "normal" in kinds:
                out["normal"] = np.where((depth > 0)[..., None], c, 0).astype(np.uint8)
        if "semantic" in kinds:
            if parts is None:
                raise BadInputError("Semantic renders need per-vertex part labels.")
            col = palette[parts % len(palette)]
            c, d = self._render_colours(camera, verts, faces, colours_per_vertex=col)
            out["semantic"] = np.where((d > 0)[..., None], c, 0).astype(np.uint8)
            depth = d if depth is None else depth
        if "face_id" in kinds:
            ids = np.arange(1, len(faces) + 1)
            col = np.stack([ids & 255, (ids >> 8) & 255, (ids >> 16) & 255], 1).astype(np.uint8)
            c, d = self._render_colours(camera, verts, faces, colours_per_face=col)
            fid = c[..., 0].astype(np.int64) + (c[..., 1].astype(np.int64) << 8) + (c[..., 2].astype(np.int64) << 16) - 1
            fid = np.where((d > 0) & (fid < len(faces)), fid, -1)
            out["face_id"] = _repair_ids(camera, verts, faces, fid)
            depth = d if depth is None else depth
        out["depth"] = depth.astype(np.float32)
        out["mask"] = depth > 0
        return out


def _inside(camera, verts, faces, fid, ys, xs, tol=0.02):
    bary = surface_points(camera, verts, faces, fid, ys, xs)
    return (bary >= -tol).all(1)


def _repair_ids(camera, verts, faces, fid):
    """The offscreen renderer multisamples, so a pixel on a triangle edge can read a blend of two id colours.
    Keep an id only when the pixel centre's ray really hits that triangle; otherwise take a 4-neighbour's id
    that it hits, or mark the pixel unknown (−1)."""
    H, W = fid.shape
    ys, xs = np.nonzero(fid >= 0)
    ok = _inside(camera, verts, faces, fid, ys, xs)
    bad_y, bad_x = ys[~ok], xs[~ok]
    out = fid.copy()
    out[bad_y, bad_x] = -1
    todo = np.ones(len(bad_y), bool)
    for dy, dx in ((0, 1), (0, -1), (1, 0), (-1, 0), (1, 1), (-1, -1), (1, -1), (-1, 1)):
        if not todo.any():
            break
        ny, nx = np.clip(bad_y + dy, 0, H - 1), np.clip(bad_x + dx, 0, W - 1)
        cand = fid[ny, nx]
        sel = todo & (cand >= 0)
        if not sel.any():
            continue
        trial = np.full((H, W), -1)
        trial[bad_y[sel], bad_x[sel]] = cand[sel]
        hit = _inside(camera, verts, faces, trial, bad_y[sel], bad_x[sel])
        idx = np.nonzero(sel)[0][hit]
        out[bad_y[idx], bad_x[idx]] = cand[idx]
        todo[idx] = False
    return out


def part_labels(weights: np.ndarray) -> np.ndarray:
    j = weights.argmax(1)
    return np.array([PART_OF_JOINT.get(int(x), 8 if x in range(25, 40) else 9 if x in range(40, 55) else 0) for x in j])


def champ_part_labels(weights: np.ndarray) -> np.ndarray:
    """Per vertex, the SMPL joint (0–23) of its dominant SMPL-X joint: Champ's semantic labels."""
    j = weights.argmax(1)
    return np.where(j < 22, j, np.where(j < 25, 15, np.where(j < 40, 22, 23))).astype(np.int64)


def champ_depth(depth: np.ndarray) -> np.ndarray:
    """Champ's depth map from metric depth (0 = background), per frame: 1 − (z − z_min) / (z_max − z_min) over the
    frame's body pixels, so the nearest point is 1 and the farthest 0, background 0."""
    fg = depth > 0
    if not fg.any():
        return np.zeros_like(depth, dtype=np.float32)
    lo, hi = depth[fg].min(), depth[fg].max()
    return np.where(fg, 1.0 - (depth - lo) / max(hi - lo, 1e-6), 0.0).astype(np.float32)


def surface_points(camera, verts: np.ndarray, faces: np.ndarray, face_id: np.ndarray, ys=None, xs=None):
    """Barycentric coordinates of each pixel centre's ray on its triangle (Möller–Trumbore): (H, W, 3), or (N, 3)
    for the pixels ``ys, xs`` when given."""
    H, W = face_id.shape
    full = ys is None
    if full:
        ys, xs = np.nonzero(face_id >= 0)
    f = faces[face_id[ys, xs]]
    A, B, C = verts[f[:, 0]], verts[f[:, 1]], verts[f[:, 2]]
    d = np.stack([(xs + 0.5 - camera.cx) / camera.fx, (ys + 0.5 - camera.cy) / camera.fy, np.ones_like(xs, float)], 1)
    e1, e2 = B - A, C - A
    p = np.cross(d, e2)
    det = (e1 * p).sum(1)
    det = np.where(np.abs(det) < 1e-12, 1e-12, det)
    t = -A
    u = (t * p).sum(1) / det
    q = np.cross(t, e1)
    v = (d * q).sum(1) / det
    b = np.stack([1 - u - v, u, v], 1)
    if not full:
        return b
    bary = np.zeros((H, W, 3))
    bary[ys, xs] = b
    return bary


def human_flow(camera, verts0: np.ndarray, verts1: np.ndarray, faces: np.ndarray, face_id0: np.ndarray,
               depth1: np.ndarray, occlusion_tol: float = 0.02):
    """Flow (H, W, 2) in pixels from frame n to n+1 and its validity mask (H, W)."""
    if verts0.shape != verts1.shape:
        raise BadInputError(f"Frames n and n+1 have different vertex counts ({verts0.shape} vs {verts1.shape}).")
    H, W = face_id0.shape
    bary = surface_points(camera, verts0, faces, face_id0)
    ys, xs = np.nonzero(face_id0 >= 0)
    f = faces[face_id0[ys, xs]]
    # A pixel whose id was filled from a neighbour (a multisampled id render blends small triangles' colours; at 64 px
    # most of a body's pixels) has a ray that misses its triangle, and its barycentrics extrapolate the triangle's
    # plane and motion.  Near the triangle that is the better estimate (lower warping error than its nearest point),
    # but far outside it the point can land metres away, even behind the camera: a pixel whose extrapolated point is
    # more than 16 pixels' width from its triangle takes the motion of the triangle's nearest point (in barycentric
    # terms), from where that point is in frame n.
    b = bary[ys, xs]
    uv0 = np.stack([xs + 0.5, ys + 0.5], 1).astype(np.float64)
    P0 = (verts0[f] * b[..., None]).sum(1)
    P1 = (verts1[f] * b[..., None]).sum(1)
    centre = verts0[f].mean(1)
    pixel = np.abs(centre[:, 2]) / camera.fx  # a pixel's width at the triangle's depth
    far = np.linalg.norm(P0 - centre, axis=1) > 16 * pixel
    if far.any():
        bc = np.clip(b[far], 0.0, None)
        bc = bc / np.maximum(bc.sum(1, keepdims=True), 1e-12)
        uv0[far] = camera.project((verts0[f[far]] * bc[..., None]).sum(1))
        P1[far] = (verts1[f[far]] * bc[..., None]).sum(1)
    uv1 = camera.project(P1)
    flow = np.zeros((H, W, 2), np.float32)
    flow[ys, xs] = uv1 - uv0
    valid = np.zeros((H, W), bool)
    xi, yi = np.floor(uv1[:, 0]).astype(int), np.floor(uv1[:, 1]).astype(int)
    inside = (xi >= 0) & (yi >= 0) & (xi < W) & (yi < H)
    ok = np.zeros(len(xs), bool)
    d1 = depth1[yi[inside], xi[inside]]
    ok[inside] = (d1 > 0) & (P1[inside, 2] <= d1 + occlusion_tol)
    valid[ys[ok], xs[ok]] = True
    return flow, valid


def flow_to_colour(flow: np.ndarray, valid: Optional[np.ndarray] = None, max_mag: Optional[float] = None) -> np.ndarray:
    """Middlebury-style colour wheel: hue = direction, saturation = magnitude (normalised by ``max_mag``)."""
    import cv2

    mag, ang = cv2.cartToPolar(flow[..., 0].astype(np.float32), flow[..., 1].astype(np.float32))
    m = max_mag or (float(np.percentile(mag[valid], 99)) if valid is not None and valid.any() else float(mag.max()) or 1.0)
    hsv = np.zeros(flow.shape[:2] + (3,), np.uint8)
    hsv[..., 0] = (ang * 180 / np.pi / 2).astype(np.uint8)
    hsv[..., 1] = np.clip(mag / max(m, 1e-6) * 255, 0, 255).astype(np.uint8)
    hsv[..., 2] = 255
    rgb = cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB)
    if valid is not None:
        rgb[~valid] = 0
    return rgb


def render_sequence(body, bm, width: int, height: int, kinds=("normal", "mask"), callback=None,
                    convention: str = "performer") -> Dict[str, list]:
    """Render every frame of a ``BodySequence`` with its camera scaled to ``width``×``height``.  Returns lists per
    kind plus ``_verts`` (camera-space vertices per frame); ``callback(done, total)`` after each frame.
    ``convention="champ"``: the semantic map in Champ's labels and colours."""
    import torch

    cam = body.camera.scaled(width, height)
    r = Renderer(width, height)
    out: Dict[str, list] = {k: [] for k in kinds}
    out["_verts"] = []
    try:
        if convention not in ("performer", "champ"):
            raise BadInputError(f"convention: expected 'performer' or 'champ'; got {convention!r}.")
        champ = convention == "champ"
        parts = (champ_part_labels if champ else part_labels)(bm.weights) if "semantic" in kinds else None
        for f in range(body.frames):
            with torch.no_grad():
                v = bm.forward(body, [f])["vertices"][0].cpu().numpy()
            o = r.render(cam, v, bm.faces, parts, kinds=kinds, palette=CHAMP_SEMANTIC_COLOURS if champ else PART_COLOURS)
            for k in kinds:
                out[k].append(o[k])
            out["_verts"].append(v)
            if callback:
                callback(f + 1, body.frames)
    finally:
        r.close()
    return out


def render_maps(body, bm, width: int, height: int, kind: str = "normal") -> np.ndarray:
    """(F, H, W, 3) uint8 renders of one ``kind`` ("normal" or "semantic") — the SMPL-X guidance maps the pose
    controller's ``smplx`` encoder reads."""
    return np.stack(render_sequence(body, bm, width, height, kinds=(kind,))[kind])


def render_normals(body, bm, width: int, height: int) -> np.ndarray:
    """(F, H, W, 3) uint8 normal renders (:func:`render_maps` of kind "normal")."""
    return render_maps(body, bm, width, height, "normal")
