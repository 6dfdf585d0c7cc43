"""Body nodes: SMPL-X bodies from poses or files, shape transfer, headless renders, 3D-aware human flow."""
from __future__ import annotations


import numpy as np
import torch
from comfy_api.latest import io

from ._common import BODY, CATEGORY, FLOW, POSE, Progress, preview

CAT = f"{CATEGORY}/body"
EMBEDDED_CHOICE = "embedded (procedural stand-in, not SMPL-X)"
MODEL_TOOLTIP = ("SMPL-X .npz in models/performer/body (SMPLX_NEUTRAL.npz), or the embedded procedural body the pack "
                 "generates (SMPL-X file format, made-up geometry: fine for tests and demos, not for real people).")


def _model_choices():
    from ._common import weight_choices

    return [EMBEDDED_CHOICE] + [f for f in weight_choices("performer_body", with_dirs=False) if f.endswith((".npz", ".pkl"))]


def _model_path(choice):
    from ._common import resolve

    return None if choice == EMBEDDED_CHOICE else resolve(choice, ("performer_body",))


def _model_of(body):
    from ..models.body.smplx import EMBEDDED, get_body_model

    return get_body_model(None if body.model == EMBEDDED else body.model)


class PerformerFitBody(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="PerformerFitBody", display_name="Fit SMPL-X to Poses 🎭", category=CAT,
            description="Fits SMPL-X (shape shared over the video, per-frame pose, hands, translation) to whole-body 2D "
                        "keypoints by optimisation with pose/shape priors and temporal smoothness. No 3D estimator needed.",
            inputs=[POSE.Input("pose", tooltip="PERFORMER_POSE to fit (body, feet and hands are used)."),
                    io.Combo.Input("body_model", options=_model_choices(), tooltip=MODEL_TOOLTIP),
                    io.Int.Input("iterations", default=200, min=1, max=5000, tooltip="Optimisation steps (plus a third more for the first stage)."),
                    io.Float.Input("fov", default=40.0, min=5.0, max=120.0, step=0.5, tooltip="Vertical field of view of the camera (degrees)."),
                    io.Int.Input("person", default=0, min=0, max=63, tooltip="Which person of the pose sequence.")],
            outputs=[BODY.Output(display_name="body", tooltip="PERFORMER_BODY: per-frame SMPL-X parameters and camera.")],
        )

    @classmethod
    def execute(cls, pose, body_model, iterations, fov, person) -> io.NodeOutput:
        from ..models.body.smplx import Camera, get_body_model
        from ..models.body.fit import fit_to_keypoints

        bm = get_body_model(_model_path(body_model))
        total = iterations + max(iterations // 3, 1)
        return io.NodeOutput(fit_to_keypoints(pose, bm, Camera.default(pose.width, pose.height, fov), person=person,
                                              iters=iterations, callback=Progress(total)))


class PerformerLoadBodyParams(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        from ._common import input_files

        files = input_files(".npz")
        return io.Schema(
            node_id="PerformerLoadBodyParams", display_name="Load SMPL-X Parameters 🎭", category=CAT,
            description="Per-frame SMPL-X parameters from an .npz made by SMPLer-X / 4D-Humans / PyMAF-X style tools "
                        "(keys: betas|shape, global_orient|root_pose, body_pose, left/right_hand_pose, jaw_pose, "
                        "expression|expr, transl|cam_trans; axis-angle or rotation matrices). Read without pickle.",
            inputs=[io.Combo.Input("file", options=files or [""], tooltip="An .npz in ComfyUI's input folder."),
                    io.Combo.Input("body_model", options=_model_choices(), tooltip=MODEL_TOOLTIP),
                    io.Int.Input("width", default=512, min=8, max=8192, tooltip="Image width the parameters' camera belongs to."),
                    io.Int.Input("height", default=512, min=8, max=8192, tooltip="Image height."),
                    io.Float.Input("fov", default=40.0, min=5.0, max=120.0, step=0.5, tooltip="Vertical field of view (degrees)."),
                    io.Float.Input("fps", default=8.0, min=0.1, max=240.0, step=0.1, tooltip="Frame rate.")],
            outputs=[BODY.Output(display_name="body", tooltip="PERFORMER_BODY.")],
        )

    @classmethod
    def execute(cls, file, body_model, width, height, fov, fps) -> io.NodeOutput:
        from ..models.body.smplx import EMBEDDED, Camera, from_estimator
        from ..models.errors import BadInputError
        from ._common import input_path

        path = input_path(file, "Body parameter file")
        try:
            with np.load(path, allow_pickle=False) as z:
                data = {k: z[k] for k in z.files}
        except (ValueError, OSError) as e:
            raise BadInputError(f"Could not read {file} as a plain .npz (no pickle): {e}") from e
        model = _model_path(body_model) or EMBEDDED
        return io.NodeOutput(from_estimator(data, Camera.default(width, height, fov), fps=fps, model=model))


class PerformerTransferShape(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="PerformerTransferShape", display_name="Transfer Body Shape 🎭", category=CAT,
            description="Figure transfer (VividPose/Champ): body shape (and optionally expression) from the reference; "
                        "pose, orientation, translation and camera from the driving bodies.",
            inputs=[BODY.Input("driving", tooltip="Driving bodies."),
                    BODY.Input("reference", tooltip="Body fitted to the reference image (its first frame is used)."),
                    io.Boolean.Input("expression", default=False, tooltip="Also take the facial expression from the reference.")],
            outputs=[BODY.Output(display_name="body", tooltip="Driving bodies with the reference person's shape.")],
        )

    @classmethod
    def execute(cls, driving, reference, expression) -> io.NodeOutput:
        from ..models.body.smplx import transfer_shape

        return io.NodeOutput(transfer_shape(driving, reference, expression=expression))


def _render_all(body, width, height, kinds, callback, convention="performer"):
    from ..models.body.render import render_sequence

    bm = _model_of(body)
    return render_sequence(body, bm, width, height, kinds, callback, convention), body.camera.scaled(width, height), bm


class PerformerRenderBody(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="PerformerRenderBody", display_name="Render Body (normal, depth, semantic, mask) 🎭", category=CAT,
            description="Headless pyrender renders of the bodies (EGL, or OSMesa): camera-space normals (OpenGL "
                        "convention, n·½+½), depth (near = bright), body-part colours and the silhouette mask.",
            inputs=[BODY.Input("body", tooltip="PERFORMER_BODY."),
                    io.Int.Input("width", default=0, min=0, max=8192, tooltip="Render width; 0 = the body camera's."),
                    io.Int.Input("height", default=0, min=0, max=8192, tooltip="Render height; 0 = the body camera's.")],
            outputs=[io.Image.Output(display_name="normal", tooltip="Normal maps."),
                     io.Image.Output(display_name="depth", tooltip="Depth maps, normalised per video (near = bright, background black)."),
                     io.Image.Output(display_name="semantic", tooltip="Body-part colour maps."),
                     io.Mask.Output(display_name="mask", tooltip="Silhouettes.")],
        )

    @classmethod
    def execute(cls, body, width, height) -> io.NodeOutput:
        w, h = width or body.camera.width, height or body.camera.height
        out, _, _ = _render_all(body, w, h, ("normal", "semantic", "depth", "mask"), Progress(body.frames))
        depth = np.stack(out["depth"])
        fg = depth > 0
        if fg.any():
            lo, hi = depth[fg].min(), depth[fg].max()
            d = np.where(fg, 1.0 - 0.8 * (depth - lo) / max(hi - lo, 1e-6), 0.0)
        else:
            d = np.zeros_like(depth)
        img = lambda a: torch.from_numpy(np.stack(a)).float() / 255.0  # noqa: E731
        normal = img(out["normal"])
        return io.NodeOutput(normal, torch.from_numpy(np.repeat(d[..., None], 3, -1)).float(), img(out["semantic"]),
                             torch.from_numpy(np.stack(out["mask"])).float(),
                             ui=preview("body", images=normal, fps=body.fps, label="SMPL-X normals"))


class PerformerChampMaps(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="PerformerChampMaps", display_name="Render Body for Champ (depth, normal, semantic) 🎭", category=CAT,
            description="The bodies rendered in the conventions Champ's released guidance encoders were trained on: "
                        "depth per frame 1 − (z − z_min)/(z_max − z_min) over the body (nearest white, background "
                        "black), camera-space normals n·½+½ (x right, y up, z toward the viewer) on black, and the "
                        "semantic map with each vertex coloured by its dominant SMPL joint in Champ's viridis palette "
                        "on black. Feed them to Apply Champ Guidance with the matching encoders; the dwpose encoder "
                        "takes Draw Skeleton Maps.",
            inputs=[BODY.Input("body", tooltip="PERFORMER_BODY, ideally driving bodies with the reference person's shape "
                                               "(Transfer Body Shape), as Champ renders them."),
                    io.Int.Input("width", default=0, min=0, max=8192, tooltip="Render width; 0 = the body camera's."),
                    io.Int.Input("height", default=0, min=0, max=8192, tooltip="Render height; 0 = the body camera's.")],
            outputs=[io.Image.Output(display_name="depth", tooltip="Champ depth maps (grey in three channels)."),
                     io.Image.Output(display_name="normal", tooltip="Champ normal maps."),
                     io.Image.Output(display_name="semantic_map", tooltip="Champ semantic maps (SMPL parts, viridis).")],
        )

    @classmethod
    def execute(cls, body, width, height) -> io.NodeOutput:
        from ..models.body.render import champ_depth

        w, h = width or body.camera.width, height or body.camera.height
        out, _, _ = _render_all(body, w, h, ("normal", "semantic", "depth"), Progress(body.frames), "champ")
        d = np.stack([champ_depth(x) for x in out["depth"]])
        img = lambda a: torch.from_numpy(np.stack(a)).float() / 255.0  # noqa: E731
        return io.NodeOutput(torch.from_numpy(np.repeat(d[..., None], 3, -1)), img(out["normal"]), img(out["semantic"]),
                             ui=preview("body", images=img(out["semantic"]), fps=body.fps, label="Champ semantic maps"))


class PerformerBodyFlow(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="PerformerBodyFlow", display_name="3D-aware Human Flow 🎭", category=CAT,
            description="Per-pixel motion of the visible body surface between consecutive frames (DiffPerformer's human "
                        "flow): each pixel's exact surface point is carried by the mesh to the next frame and projected; "
                        "pixels that leave the frame or become hidden are invalid. With a colour-wheel preview.",
            inputs=[BODY.Input("body", tooltip="PERFORMER_BODY (at least two frames)."),
                    io.Int.Input("width", default=0, min=0, max=8192, tooltip="Flow width; 0 = the body camera's."),
                    io.Int.Input("height", default=0, min=0, max=8192, tooltip="Flow height; 0 = the body camera's.")],
            outputs=[FLOW.Output(display_name="flow", tooltip="PERFORMER_FLOW: flow (F−1, H, W, 2) in pixels + validity."),
                     io.Image.Output(display_name="preview", tooltip="Colour-wheel flow images (F−1 frames; black = invalid).")],
        )

    @classmethod
    def execute(cls, body, width, height) -> io.NodeOutput:
        from ..models.errors import BadInputError
        from ..models.body.render import flow_to_colour, human_flow

        if body.frames < 2:
            raise BadInputError(f"Human flow needs at least 2 body frames; got {body.frames}.")
        w, h = width or body.camera.width, height or body.camera.height
        out, cam, bm = _render_all(body, w, h, ("face_id", "depth"), Progress(body.frames))
        flows, valids = [], []
        for f in range(body.frames - 1):
            fl, va = human_flow(cam, out["_verts"][f], out["_verts"][f + 1], bm.faces, out["face_id"][f], out["depth"][f + 1])
            flows.append(fl)
            valids.append(va)
        flow = {"flow": torch.from_numpy(np.stack(flows)), "valid": torch.from_numpy(np.stack(valids)), "width": w, "height": h}
        m = max(float(np.percentile(np.linalg.norm(np.stack(flows)[np.stack(valids)], axis=-1), 99)) if np.stack(valids).any() else 1.0, 1.0)
        prev = np.stack([flow_to_colour(fl, va, m) for fl, va in zip(flows, valids)])
        return io.NodeOutput(flow, torch.from_numpy(prev).float() / 255.0)


class PerformerFlowPreview(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="PerformerFlowPreview", display_name="Flow Preview (colour wheel) 🎭", category=CAT,
            description="Colours a PERFORMER_FLOW: hue = direction, saturation = speed (scaled by max_pixels, or by the "
                        "99th percentile when 0); invalid pixels black.",
            inputs=[FLOW.Input("flow", tooltip="PERFORMER_FLOW from 3D-aware Human Flow."),
                    io.Float.Input("max_pixels", default=0.0, min=0.0, max=1000.0, step=0.5, tooltip="Speed shown fully saturated; 0 = automatic.")],
            outputs=[io.Image.Output(display_name="images", tooltip="One colour image per frame pair.")],
        )

    @classmethod
    def execute(cls, flow, max_pixels) -> io.NodeOutput:
        from ..models.body.render import flow_to_colour

        f, v = flow["flow"].numpy(), flow["valid"].numpy()
        m = max_pixels or max(float(np.percentile(np.linalg.norm(f[v], axis=-1), 99)) if v.any() else 1.0, 1.0)
        return io.NodeOutput(torch.from_numpy(np.stack([flow_to_colour(a, b, m) for a, b in zip(f, v)])).float() / 255.0)


class PerformerBodyToPose(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="PerformerBodyToPose", display_name="Body to Pose (project joints) 🎭", category=CAT,
            description="Projects the bodies' joints to a PERFORMER_POSE (body, feet, hands) — e.g. to draw skeleton "
                        "maps that match the SMPL-X renders exactly.",
            inputs=[BODY.Input("body", tooltip="PERFORMER_BODY.")],
            outputs=[POSE.Output(display_name="pose", tooltip="PERFORMER_POSE from the projected joints.")],
        )

    @classmethod
    def execute(cls, body) -> io.NodeOutput:
        from ..models.body.fit import body_to_pose

        return io.NodeOutput(body_to_pose(body, _model_of(body)))


NODES = [PerformerFitBody, PerformerLoadBodyParams, PerformerTransferShape, PerformerRenderBody, PerformerChampMaps,
         PerformerBodyFlow,
         PerformerFlowPreview, PerformerBodyToPose]
