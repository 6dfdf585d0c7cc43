"""The embedded default body model: a procedural humanoid written in the SMPL-X ``.npz`` format.

Licensed SMPL-X files cannot ship with the pack, so the repo builds its own stand-in that ``smplx`` loads like
the real thing: the same 55-joint tree (``kintree_table``), the same keys and array shapes as an SMPL-X 1.0
``SMPLX_NEUTRAL.npz`` (10 475 vertices, 20 908 faces, 10 shape + 10 expression components, 486 pose
correctives, 51 face landmarks), and the special vertices smplx reads for extra joints (nose, eyes, ears, toes,
heels, fingertips) at the indices smplx expects.  The geometry is a capsule-and-ellipsoid body around the
skeleton, skinned to it; vertices beyond the generated ones are parked unused at the pelvis and padding faces
are degenerate (zero area, dropped by the renderer).

Shape space (``betas``; the rest are zero):
  0 height (uniform scale from the ground up) · 1 girth (limbs and torso thicker) · 2 limb length (arms and
  legs longer) · 3 shoulder width · 4 hip width
Expression: 0 opens the mouth (lowers the chin), the rest are zero.  Pose correctives are zero.

This is *not* SMPL-X and makes no claim about real body statistics; README and node tooltips say when it is
in use.  ``generate()`` is deterministic.
"""
from __future__ import annotations

import io
import math
import os
from typing import Dict, List, Tuple

import numpy as np

N_VERTS, N_FACES, N_JOINTS = 10475, 20908, 55
NUM_BETAS, NUM_EXPR = 10, 10
PARENTS = [-1, 0, 0, 0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 9, 9, 12, 13, 14, 16, 17, 18, 19, 15, 15, 15,
           20, 25, 26, 20, 28, 29, 20, 31, 32, 20, 34, 35, 20, 37, 38,
           21, 40, 41, 21, 43, 44, 21, 46, 47, 21, 49, 50, 21, 52, 53]
EMBEDDED_NAME = "performer_embedded_body (procedural, SMPL-X file format)"


def rest_joints() -> np.ndarray:
    """(55, 3) T-pose joints in metres; y up, the body faces +z, its left is +x (the SMPL-X convention)."""
    J = np.zeros((N_JOINTS, 3))
    base = {0: (0, 0.95, 0), 1: (0.09, 0.88, 0), 3: (0, 1.05, 0), 4: (0.10, 0.50, 0.01), 6: (0, 1.18, 0),
            7: (0.10, 0.09, -0.02), 9: (0, 1.30, 0), 10: (0.11, 0.03, 0.09), 12: (0, 1.50, 0), 13: (0.07, 1.42, 0),
            15: (0, 1.58, 0.01), 16: (0.18, 1.43, 0), 18: (0.45, 1.43, 0), 20: (0.70, 1.43, 0), 22: (0, 1.585, 0.03),
            23: (0.033, 1.655, 0.085)}
    mirror = {1: 2, 4: 5, 7: 8, 10: 11, 13: 14, 16: 17, 18: 19, 20: 21, 23: 24}
    for j, p in base.items():
        J[j] = p
        if j in mirror:
            J[mirror[j]] = (-p[0], p[1], p[2])
    # fingers (palm down, extending along ±x): index, middle, pinky, ring, thumb — three joints each
    for side, (first, wrist, sx) in enumerate(((25, 20, 1.0), (40, 21, -1.0))):
        w = J[wrist]
        for f, z in enumerate((0.03, 0.01, -0.03, -0.01)):
            for k in range(3):
                J[first + 3 * f + k] = (w[0] + sx * (0.08 + 0.035 * k), w[1], z)
        for k in range(3):
            J[first + 12 + k] = (w[0] + sx * (0.03 + 0.025 * k), w[1] - 0.01, 0.045 + 0.012 * k)
    return J


class _Builder:
    def __init__(self, J):
        self.J = J
        self.V: List[np.ndarray] = []
        self.F: List[Tuple[int, int, int]] = []
        self.W: List[Dict[int, float]] = []
        self.axis: List[np.ndarray] = []  # closest point on the bone axis (for girth)
        self.part: List[int] = []  # 0 torso/head, 1 arm, 2 leg, 3 hand/foot
        self.reg: Dict[int, List[int]] = {}

    def add(self, p, w, axis, part):
        self.V.append(np.asarray(p, float))
        self.W.append(w)
        self.axis.append(np.asarray(axis, float))
        self.part.append(part)
        return len(self.V) - 1

    def tube(self, a, b, r0, r1, rings, seg, part, end=None, rz=None, cap_end=True):
        """Tube from joint a to b (or point ``end``), skinned to a (blending into b's at the far end)."""
        pa = self.J[a]
        pb = self.J[b] if end is None else np.asarray(end, float)
        d = pb - pa
        L = np.linalg.norm(d)
        d /= L
        up = np.array([0, 0, 1.0]) if abs(d[2]) < 0.9 else np.array([1.0, 0, 0])
        u = np.cross(d, up)
        u /= np.linalg.norm(u)
        v = np.cross(d, u)
        ring_ids = []
        parent = PARENTS[a]
        for i in range(rings):
            t = i / (rings - 1)
            c = pa + d * L * t
            r = r0 + (r1 - r0) * t
            ids = []
            for s in range(seg):
                ang = 2 * math.pi * s / seg
                rr = rz if rz is not None else r
                p = c + u * r * math.cos(ang) + v * rr * math.sin(ang) * (r / r0 if rz is not None else 1)
                w = {a: 1.0}
                if t < 0.15 and parent >= 0:
                    k = 0.5 * (1 - t / 0.15)
                    w = {a: 1 - k, parent: k}
                elif t > 0.85 and end is None:
                    k = 0.5 * (t - 0.85) / 0.15
                    w = {a: 1 - k, b: k}
                ids.append(self.add(p, w, c, part))
            ring_ids.append(ids)
        for i in range(rings - 1):
            for s in range(seg):
                p0, p1 = ring_ids[i][s], ring_ids[i][(s + 1) % seg]
                q0, q1 = ring_ids[i + 1][s], ring_ids[i + 1][(s + 1) % seg]
                self.F += [(p0, q0, p1), (p1, q0, q1)]
        self.cap(ring_ids[0], pa, {a: 1.0}, part, flip=True)
        tip = self.cap(ring_ids[-1], pb, {a: 1.0} if end is not None else {b: 0.5, a: 0.5}, part) if cap_end else None
        self.reg.setdefault(a, ring_ids[0])
        return ring_ids, tip

    def cap(self, ring, centre, w, part, flip=False):
        c = self.add(centre, w, centre, part)
        n = len(ring)
        for s in range(n):
            a, b = ring[s], ring[(s + 1) % n]
            self.F.append((c, b, a) if not flip else (c, a, b))
        return c

    def ellipsoid(self, centre, radii, joint, part, lat=12, lon=16, regress=None):
        centre = np.asarray(centre, float)
        top = self.add(centre + (0, radii[1], 0), {joint: 1.0}, centre, part)
        rings = []
        for i in range(1, lat):
            th = math.pi * i / lat
            ids = []
            for k in range(lon):
                ph = 2 * math.pi * k / lon
                p = centre + np.array([radii[0] * math.sin(th) * math.sin(ph), radii[1] * math.cos(th),
                                       radii[2] * math.sin(th) * math.cos(ph)])
                ids.append(self.add(p, {joint: 1.0}, centre, part))
            rings.append(ids)
        bot = self.add(centre - (0, radii[1], 0), {joint: 1.0}, centre, part)
        for k in range(lon):
            k1 = (k + 1) % lon
            self.F.append((top, rings[0][k], rings[0][k1]))
            self.F.append((bot, rings[-1][k1], rings[-1][k]))
        for i in range(lat - 2):
            for k in range(lon):
                k1 = (k + 1) % lon
                a, b, c, d = rings[i][k], rings[i][k1], rings[i + 1][k], rings[i + 1][k1]
                self.F += [(a, c, b), (b, c, d)]
        if regress is not None:
            self.reg.setdefault(regress, [v for r in rings for v in r])
        return rings, top, bot


def _nearest(V, ids, p):
    ids = np.asarray(ids)
    return int(ids[np.argmin(np.linalg.norm(V[ids] - p, axis=1))])


def generate() -> Dict[str, np.ndarray]:
    """The arrays of the embedded body model, keyed like an SMPL-X ``.npz``."""
    from smplx.vertex_ids import vertex_ids

    J = rest_joints()
    B = _Builder(J)
    # torso and neck: an elliptical tube pelvis -> spine -> neck, skinned along the spine chain
    B.tube(0, 3, 0.13, 0.135, 6, 24, 0, rz=0.09)
    B.tube(3, 6, 0.135, 0.14, 5, 24, 0, rz=0.09)
    B.tube(6, 9, 0.14, 0.15, 5, 24, 0, rz=0.10)
    B.tube(9, 12, 0.15, 0.06, 7, 24, 0, rz=0.10)
    B.tube(12, 15, 0.05, 0.05, 4, 16, 0)
    B.ellipsoid(J[0] + (0, -0.04, 0), (0.16, 0.1, 0.1), 0, 0, lat=8, lon=20)  # pelvis: closes the crotch
    for c in (13, 14):
        B.tube(c, c + 3, 0.05, 0.055, 4, 12, 1)
    # head (joint 15), eyes (23, 24), jaw (22)
    head_rings, head_top, _ = B.ellipsoid(J[15] + (0, 0.08, 0.0), (0.085, 0.11, 0.10), 15, 0, lat=16, lon=24)
    B.ellipsoid(J[22] + (0, -0.02, 0.03), (0.05, 0.03, 0.05), 22, 0, lat=8, lon=12, regress=22)
    for e in (23, 24):
        B.ellipsoid(J[e], (0.012, 0.012, 0.012), e, 0, lat=6, lon=8, regress=e)
    B.reg[15] = [v for r in head_rings[6:9] for v in r]  # a band around the head joint height (centroid fixed below)
    # arms
    for s, (sh, el, wr) in enumerate(((16, 18, 20), (17, 19, 21))):
        B.tube(sh, el, 0.055, 0.045, 8, 12, 1)
        B.tube(el, wr, 0.045, 0.035, 8, 12, 1)
    # hands: palm + fingers with tips
    tips = {}
    for first, wrist, sx in ((25, 20, 1.0), (40, 21, -1.0)):
        palm_end = J[wrist] + (sx * 0.075, 0, 0)
        B.tube(wrist, first + 3, 0.03, 0.03, 4, 10, 3, end=palm_end, rz=0.015)
        for f in range(5):
            j1 = first + 3 * f
            for k in range(2):
                B.tube(j1 + k, j1 + k + 1, 0.009, 0.008, 3, 8, 3)
            tip_pt = J[j1 + 2] + (sx * 0.025, 0, 0) if f < 4 else J[j1 + 2] + (sx * 0.02, 0, 0.008)
            _, tips[j1 + 2] = B.tube(j1 + 2, j1 + 2, 0.008, 0.006, 3, 8, 3, end=tip_pt)
    # legs and feet
    foot_pts = {}
    for hip, knee, ankle, foot, sx in ((1, 4, 7, 10, 1.0), (2, 5, 8, 11, -1.0)):
        B.tube(hip, knee, 0.075, 0.055, 10, 14, 2)
        B.tube(knee, ankle, 0.055, 0.04, 10, 14, 2)
        B.tube(ankle, foot, 0.045, 0.04, 4, 12, 3, rz=0.03)
        toe = J[foot] + (0, -0.01, 0.08)
        rings, tip = B.tube(foot, foot, 0.04, 0.03, 4, 12, 3, end=toe, rz=0.02)
        V = np.array(B.V)
        last = rings[-1]
        foot_pts[sx] = {"big": _nearest(V, last, toe + (-sx * 0.03, 0, 0)), "small": _nearest(V, last, toe + (sx * 0.03, 0, 0)),
                        "heel": B.add(J[ankle] + (0, -0.06, -0.06), {ankle: 1.0}, J[ankle], 3)}
    V = np.array(B.V)
    special = {}
    front = [v for r in head_rings for v in r]
    special["nose"] = _nearest(V, front, J[15] + (0, 0.06, 0.12))
    special["leye"] = B.reg[23][0]
    special["reye"] = B.reg[24][0]
    special["lear"] = _nearest(V, front, J[15] + (0.1, 0.08, 0))
    special["rear"] = _nearest(V, front, J[15] + (-0.1, 0.08, 0))
    for name, j in (("lindex", 27), ("lmiddle", 30), ("lpinky", 33), ("lring", 36), ("lthumb", 39),
                    ("rindex", 42), ("rmiddle", 45), ("rpinky", 48), ("rring", 51), ("rthumb", 54)):
        special[name] = tips[j]
    for sx, side in ((1.0, "L"), (-1.0, "R")):
        special[f"{side}BigToe"] = foot_pts[sx]["big"]
        special[f"{side}SmallToe"] = foot_pts[sx]["small"]
        special[f"{side}Heel"] = foot_pts[sx]["heel"]

    V = np.array(B.V)
    n = len(V)
    import trimesh

    tm = trimesh.Trimesh(vertices=V, faces=np.array(B.F), process=False)
    trimesh.repair.fix_normals(tm, multibody=True)  # every closed part wound outward (normal maps, culling)
    B.F = [tuple(f) for f in np.asarray(tm.faces)]
    if n > N_VERTS or len(B.F) > N_FACES:
        raise RuntimeError(f"embedded body too large: {n} vertices, {len(B.F)} faces")
    # permute so the special vertices sit where smplx looks for them
    want = vertex_ids["smplx"]
    perm = np.full(N_VERTS, -1)  # new index -> old index
    used_old = set()
    for name, new in want.items():
        perm[new] = special[name]
        used_old.add(special[name])
    rest_old = iter([i for i in range(n) if i not in used_old])
    pad_old = n  # the first padding vertex (parked at the pelvis)
    for new in range(N_VERTS):
        if perm[new] == -1:
            nxt = next(rest_old, None)
            perm[new] = nxt if nxt is not None else pad_old
            if nxt is None:
                pad_old += 1
    old_to_new = np.empty(N_VERTS, int)
    old_to_new[perm] = np.arange(N_VERTS)
    Vfull = np.vstack([V, np.repeat(J[:1], N_VERTS - n, 0)])[perm]
    Wfull = np.zeros((N_VERTS, N_JOINTS))
    for old, w in enumerate(B.W):
        for j, x in w.items():
            Wfull[old_to_new[old], j] += x
    Wfull[Wfull.sum(1) == 0, 0] = 1.0
    Wfull /= Wfull.sum(1, keepdims=True)
    faces = old_to_new[np.array(B.F)]
    pad = old_to_new[n]  # an unused vertex
    faces = np.vstack([faces, np.full((N_FACES - len(faces), 3), pad)])
    # joint regressor: each joint = centroid of its ring (a symmetric ring centred on the joint)
    Jreg = np.zeros((N_JOINTS, N_VERTS))
    for j in range(N_JOINTS):
        ids = B.reg.get(j)
        if ids is None:
            raise RuntimeError(f"no regressor vertices for joint {j}")
        Jreg[j, old_to_new[np.asarray(ids)]] = 1.0 / len(ids)
    # shape space
    axis = np.vstack([np.array(B.axis), np.repeat(J[:1], N_VERTS - n, 0)])[perm]
    part = np.concatenate([np.array(B.part), np.zeros(N_VERTS - n, int)])[perm]
    S = np.zeros((N_VERTS, 3, NUM_BETAS + NUM_EXPR))
    S[:, :, 0] = Vfull * 0.06  # height: +6 % per unit, from the ground (y = 0) up
    S[:, :, 1] = (Vfull - axis) * 0.15 * (part <= 2)[:, None]  # girth
    arm = (part == 1) | ((part == 3) & (Vfull[:, 1] > 1.2))
    leg = (part == 2) | ((part == 3) & (Vfull[:, 1] <= 1.2))
    S[arm, 0, 2] = 0.08 * (Vfull[arm, 0] - np.sign(Vfull[arm, 0]) * 0.18)  # arms longer along x beyond the shoulder
    S[leg, 1, 2] = -0.08 * (0.88 - Vfull[leg, 1])  # legs longer downward below the hip
    upper = Vfull[:, 1] > 1.25
    S[upper, 0, 3] = 0.10 * Vfull[upper, 0]  # shoulder width
    hips = (Vfull[:, 1] < 1.1) & (Vfull[:, 1] > 0.7) & (part != 1)
    S[hips, 0, 4] = 0.10 * Vfull[hips, 0]
    jaw_mask = Wfull[:, 22] > 0.5
    S[jaw_mask, 1, NUM_BETAS] = -0.01  # expression 0: open the mouth
    v_template = Vfull.astype(np.float32)
    # landmarks: 51 faces on the head
    head_faces = [i for i, f in enumerate(faces[: len(B.F)]) if all(Wfull[v, 15] > 0.99 for v in f)]
    lmk_faces = np.array(head_faces[:: max(1, len(head_faces) // 51)][:51], np.int64)
    kintree = np.array([PARENTS, list(range(N_JOINTS))], np.int64)
    kintree[0, 0] = 2 ** 32 - 1
    return {
        "v_template": v_template, "f": faces.astype(np.int64), "shapedirs": S.astype(np.float32),
        "posedirs": np.zeros((N_VERTS, 3, 486), np.float32), "J_regressor": Jreg.astype(np.float32),
        "weights": Wfull.astype(np.float32), "kintree_table": kintree,
        "hands_componentsl": np.eye(45, dtype=np.float32), "hands_componentsr": np.eye(45, dtype=np.float32),
        "hands_meanl": np.zeros(45, np.float32), "hands_meanr": np.zeros(45, np.float32),
        "lmk_faces_idx": lmk_faces, "lmk_bary_coords": np.full((51, 3), 1 / 3, np.float32),
        "part": part.astype(np.int8), "n_used_faces": np.array(len(B.F)),
        "model_name": np.array(EMBEDDED_NAME),
    }


def write(path: str) -> str:
    """Write the embedded model as ``path`` (an SMPL-X-style ``.npz``), atomically."""
    arrays = generate()
    d = os.path.dirname(os.path.abspath(path))
    os.makedirs(d, exist_ok=True)
    buf = io.BytesIO()
    np.savez_compressed(buf, **arrays)
    tmp = path + ".tmp"
    with open(tmp, "wb") as fh:
        fh.write(buf.getvalue())
    os.replace(tmp, path)
    return path
