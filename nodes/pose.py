"""Pose nodes: PERFORMER_POSE in and out (OpenPose JSON / POSE_KEYPOINT / files), clean-up, retargeting, skeleton maps."""
from __future__ import annotations

import os

import torch
from comfy_api.latest import io

from ._common import CATEGORY, POSE, POSE_KEYPOINT, Progress, preview

CAT = f"{CATEGORY}/pose"


class PerformerPoseFromKeypoints(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="PerformerPoseFromKeypoints", display_name="Pose from POSE_KEYPOINT 🎭", category=CAT,
            description="Converts OpenPose JSON (POSE_KEYPOINT from comfyui_controlnet_aux's DWPose/OpenPose nodes) to the "
                        "pack's pose sequence. Pixel or normalised coordinates are both accepted.",
            inputs=[POSE_KEYPOINT.Input("keypoints", tooltip="POSE_KEYPOINT: a list of frames in OpenPose JSON."),
                    io.Float.Input("fps", default=8.0, min=0.1, max=240.0, step=0.1, tooltip="Frame rate of the pose sequence.")],
            outputs=[POSE.Output(display_name="pose", tooltip="PERFORMER_POSE (COCO-WholeBody-133 per frame and person).")],
        )

    @classmethod
    def execute(cls, keypoints, fps) -> io.NodeOutput:
        from ..models.pose.sequence import from_openpose

        return io.NodeOutput(from_openpose(keypoints, fps=fps))


class PerformerPoseToKeypoints(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="PerformerPoseToKeypoints", display_name="Pose to POSE_KEYPOINT 🎭", category=CAT,
            description="Converts the pack's pose sequence to OpenPose JSON (POSE_KEYPOINT) for other packs' pose nodes.",
            inputs=[POSE.Input("pose", tooltip="PERFORMER_POSE."),
                    io.Boolean.Input("normalised", default=False, tooltip="Write 0..1 coordinates instead of pixels.")],
            outputs=[POSE_KEYPOINT.Output(display_name="keypoints", tooltip="POSE_KEYPOINT (OpenPose JSON frames).")],
        )

    @classmethod
    def execute(cls, pose, normalised) -> io.NodeOutput:
        from ..models.pose.sequence import to_openpose

        return io.NodeOutput(to_openpose(pose, normalised=normalised))


class PerformerLoadPose(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        from ._common import input_files

        files = input_files(".json")
        return io.Schema(
            node_id="PerformerLoadPose", display_name="Load Pose (JSON) 🎭", category=CAT,
            description="Loads a pose sequence saved as OpenPose JSON (by Save Pose or any OpenPose-JSON tool) from ComfyUI's input folder.",
            inputs=[io.Combo.Input("file", options=files or [""], tooltip="A .json file in ComfyUI's input folder.")],
            outputs=[POSE.Output(display_name="pose", tooltip="PERFORMER_POSE.")],
        )

    @classmethod
    def execute(cls, file) -> io.NodeOutput:
        from ..models.pose.sequence import load_json
        from ._common import input_path

        pose = load_json(input_path(file, "Pose file"))
        return io.NodeOutput(pose, ui=preview("pose", pose=pose))

    @classmethod
    def fingerprint_inputs(cls, file):
        import folder_paths

        path = folder_paths.get_annotated_filepath(file)
        return os.path.getmtime(path) if os.path.isfile(path) else file


class PerformerSavePose(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="PerformerSavePose", display_name="Save Pose (JSON) 🎭", category=CAT, is_output_node=True,
            description="Saves a pose sequence as OpenPose JSON in ComfyUI's output folder (written atomically).",
            inputs=[POSE.Input("pose", tooltip="PERFORMER_POSE."),
                    io.String.Input("filename_prefix", default="performer/pose", tooltip="Output path prefix.")],
            outputs=[],
        )

    @classmethod
    def execute(cls, pose, filename_prefix) -> io.NodeOutput:
        import folder_paths

        from ..models.pose.sequence import save_json

        full, name, counter, sub, _ = folder_paths.get_save_image_path(filename_prefix, folder_paths.get_output_directory())
        fname = f"{name}_{counter:05}_.json"
        save_json(pose, os.path.join(full, fname))
        return io.NodeOutput(ui={"text": [os.path.join(sub, fname)]})


class PerformerCleanPose(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="PerformerCleanPose", display_name="Clean Pose (gaps, jitter) 🎭", category=CAT,
            description="Fills short gaps where a person is briefly not detected (linear interpolation) and smooths "
                        "jitter with a one-euro filter. Each step is optional.",
            inputs=[POSE.Input("pose", tooltip="PERFORMER_POSE."),
                    io.Int.Input("max_gap", default=4, min=0, max=120, tooltip="Longest gap (frames) to fill; 0 = no filling."),
                    io.Boolean.Input("smooth", default=True, tooltip="Apply the one-euro filter."),
                    io.Float.Input("min_cutoff", default=1.0, min=0.01, max=30.0, step=0.01, tooltip="One-euro: cutoff (Hz) at rest; lower = smoother."),
                    io.Float.Input("beta", default=0.05, min=0.0, max=10.0, step=0.01, tooltip="One-euro: speed coefficient; higher = less lag in fast motion.")],
            outputs=[POSE.Output(display_name="pose", tooltip="The cleaned pose sequence (a new one).")],
        )

    @classmethod
    def execute(cls, pose, max_gap, smooth, min_cutoff, beta) -> io.NodeOutput:
        from ..models.pose.sequence import fill_gaps, one_euro

        out = fill_gaps(pose, max_gap) if max_gap else pose.copy()
        out = one_euro(out, min_cutoff, beta) if smooth else out
        return io.NodeOutput(out, ui=preview("pose", pose=out))


class PerformerPoseFrames(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="PerformerPoseFrames", display_name="Pose Frames (range, 4k+1) 🎭", category=CAT,
            description="A range of frames of a pose sequence, optionally shortened to 4k + 1 frames: Wan's VAE turns "
                        "4k + 1 video frames into k + 1 latent frames, so Wan workflows (WanAnimateToVideo's length, "
                        "Refine with IVR on a Wan MODEL) need that count everywhere. Use one range for the skeleton maps "
                        "and the bodies so their frames agree.",
            inputs=[POSE.Input("pose", tooltip="PERFORMER_POSE."),
                    io.Int.Input("start", default=0, min=0, max=100000, tooltip="First frame (0-based)."),
                    io.Int.Input("length", default=0, min=0, max=100000, tooltip="Frames to keep; 0 = to the end."),
                    io.Combo.Input("multiple", options=["any", "4k+1"], default="4k+1",
                                   tooltip="4k+1: keep the longest 4k + 1 frames of the range (Wan); any: keep the range as it is.")],
            outputs=[POSE.Output(display_name="pose", tooltip="The frames kept (a new sequence)."),
                     io.Int.Output(display_name="frames", tooltip="How many frames were kept (connect to WanAnimateToVideo's length).")],
        )

    @classmethod
    def execute(cls, pose, start, length, multiple) -> io.NodeOutput:
        from ..models.pose.sequence import frame_range

        out = frame_range(pose, start, length, multiple)
        return io.NodeOutput(out, out.frames, ui=preview("pose", pose=out))


class PerformerFaceCrops(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="PerformerFaceCrops", display_name="Face Crops (Wan-Animate face video) 🎭", category=CAT,
            description="Square crops of the driving person's face in every frame, from the pose's 68 face landmarks, "
                        "framed as Wan-Animate's preprocessing frames them (the landmarks' box grown to 1.3× its area, "
                        "most of the growth upwards) and resized to 512 × 512 as it does (stretched; square is an option): "
                        "the face_video WanAnimateToVideo takes for expressions. Frames without face landmarks reuse the "
                        "nearest frame's box.",
            inputs=[io.Image.Input("images", tooltip="The driving video's frames (the ones the pose was extracted from)."),
                    POSE.Input("pose", tooltip="The driving video's pose with face landmarks, same frames and size."),
                    io.Int.Input("size", default=512, min=64, max=2048, step=8, tooltip="Side of the square crops (Wan-Animate: 512)."),
                    io.Float.Input("scale", default=1.3, min=1.0, max=4.0, step=0.05, tooltip="Area of the crop ÷ area of the landmarks' box."),
                    io.Int.Input("person", default=0, min=0, max=63, tooltip="Which person of the pose (0 = first)."),
                    io.Boolean.Input("square", default=False, tooltip="Widen each box to a square before resizing "
                                                                     "(off: stretch the box, as Wan-Animate's preprocessing).")],
            outputs=[io.Image.Output(display_name="faces", tooltip="One face crop per frame (size × size).")],
        )

    @classmethod
    def execute(cls, images, pose, size, scale, person, square=False) -> io.NodeOutput:
        from ..models.errors import BadInputError
        from ..models.pose.face import crop_faces, face_boxes

        if images is None or images.ndim != 4:
            raise BadInputError("images: expected an IMAGE batch (frames, height, width, channels).")
        if images.shape[0] != pose.frames:
            raise BadInputError(f"images has {images.shape[0]} frames but the pose has {pose.frames}; use the pose "
                                "extracted from these frames.")
        if (images.shape[2], images.shape[1]) != (pose.width, pose.height):
            raise BadInputError(f"images are {images.shape[2]}×{images.shape[1]} but the pose was measured on "
                                f"{pose.width}×{pose.height}.")
        if person >= pose.people:
            raise BadInputError(f"person {person} does not exist; the pose has {pose.people} people.")
        boxes = face_boxes(pose.keypoints[:, person], pose.width, pose.height, scale)
        faces = torch.from_numpy(crop_faces(images[..., :3].float().cpu().numpy(), boxes, size, square))
        return io.NodeOutput(faces, ui=preview("faces", images=faces, fps=pose.fps))


class PerformerRetargetPose(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="PerformerRetargetPose", display_name="Retarget Pose to Reference 🎭", category=CAT,
            description="Re-proportions the driving skeleton to the person in the reference: every limb keeps the "
                        "driving direction and takes the reference's length (outward from the hips); face and hands "
                        "follow. Works with references of other sizes and framings; stays inside the canvas.",
            inputs=[POSE.Input("driving", tooltip="Driving pose sequence."),
                    POSE.Input("reference", tooltip="Pose of the reference image (its first frame is used)."),
                    io.Combo.Input("size", options=["reference", "driving"], default="reference",
                                   tooltip="reference: the person is as large as in the reference image; driving: keep the driving person's size."),
                    io.Boolean.Input("keep_translation", default=True, tooltip="Follow the driving video's global motion (else the hips stay put)."),
                    io.Int.Input("person", default=0, min=0, max=63, tooltip="Which person of the driving video to retarget.")],
            outputs=[POSE.Output(display_name="pose", tooltip="The retargeted pose sequence.")],
        )

    @classmethod
    def execute(cls, driving, reference, size, keep_translation, person) -> io.NodeOutput:
        from ..models.pose.retarget import retarget

        out = retarget(driving, reference, size=size, keep_translation=keep_translation, person=person)
        return io.NodeOutput(out, ui=preview("pose", pose=out))


class PerformerDrawPose(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="PerformerDrawPose", display_name="Draw Skeleton Maps 🎭", category=CAT,
            description="Renders poses as skeleton maps in the OpenPose/ControlNet colour convention (identical to "
                        "controlnet_aux's DWPose drawing), at any resolution.",
            inputs=[POSE.Input("pose", tooltip="PERFORMER_POSE."),
                    io.Int.Input("width", default=0, min=0, max=8192, tooltip="Output width; 0 = the pose canvas width."),
                    io.Int.Input("height", default=0, min=0, max=8192, tooltip="Output height; 0 = the pose canvas height."),
                    io.Boolean.Input("body", default=True, tooltip="Draw the body."),
                    io.Boolean.Input("hands", default=True, tooltip="Draw the hands."),
                    io.Boolean.Input("face", default=True, tooltip="Draw the face landmarks."),
                    io.Int.Input("stick_width", default=4, min=1, max=32, tooltip="Limb thickness (4 = the convention).")],
            outputs=[io.Image.Output(display_name="images", tooltip="Skeleton maps, one per frame.")],
        )

    @classmethod
    def execute(cls, pose, width, height, body, hands, face, stick_width) -> io.NodeOutput:
        from ..models.pose.sequence import draw

        maps = draw(pose, width or None, height or None, callback=Progress(pose.frames), body=body, hands=hands, face=face, stick_width=stick_width)
        images = torch.from_numpy(maps).float() / 255.0
        return io.NodeOutput(images, ui=preview("skeleton", images=images, fps=pose.fps))


def _frames(images):
    from ..models.common import to_uint8

    return to_uint8(images)


class PerformerExtractPoseMediaPipe(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="PerformerExtractPoseMediaPipe", display_name="Extract Pose (MediaPipe, offline) 🎭", category=CAT,
            description="Whole-body poses with MediaPipe Holistic, whose models ship inside the mediapipe 0.10.21 wheel: "
                        "nothing to download. One person per frame; body, feet (no small toes), 68 face points and hands "
                        "in the COCO-WholeBody layout. Results are cached by frame content.",
            inputs=[io.Image.Input("images", tooltip="Frames (a video as an IMAGE batch, or one photo)."),
                    io.Float.Input("fps", default=8.0, min=0.1, max=240.0, step=0.1, tooltip="Frame rate of the frames."),
                    io.Boolean.Input("video", default=True, tooltip="Track across frames (smoother); off = every frame on its own."),
                    io.Boolean.Input("face", default=True, tooltip="Extract the 68 face landmarks."),
                    io.Boolean.Input("hands", default=True, tooltip="Extract both hands."),
                    io.Float.Input("min_confidence", default=0.5, min=0.05, max=0.95, step=0.05, tooltip="Detection/tracking confidence.")],
            outputs=[POSE.Output(display_name="pose", tooltip="PERFORMER_POSE; frames without a person have absent points.")],
        )

    @classmethod
    def execute(cls, images, fps, video, face, hands, min_confidence) -> io.NodeOutput:
        from ..models.pose.extract import CACHE, MediaPipeExtractor, require_person

        ex = MediaPipeExtractor(face=face, hands=hands, min_confidence=min_confidence, video=video)
        pose = CACHE.extract(ex, _frames(images), fps, callback=Progress(images.shape[0]))
        pose = require_person(pose, "images")
        return io.NodeOutput(pose, ui=preview("pose", images=images, pose=pose))


class PerformerExtractPoseDWPose(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        from ._common import weight_choices

        files = [f for f in weight_choices("performer_pose", with_dirs=False) if f.endswith((".onnx", ".torchscript.pt"))]
        det = [f for f in files if "yolox" in f.lower() or "det" in f.lower()] or files
        est = [f for f in files if f not in det] or files
        return io.Schema(
            node_id="PerformerExtractPoseDWPose", display_name="Extract Pose (DWPose ONNX / TorchScript) 🎭", category=CAT,
            description="Whole-body poses with DWPose (YOLOX detector + RTMPose whole-body): the ONNX files via "
                        "onnxruntime (CUDA when available), or the TorchScript files comfyui_controlnet_aux ships "
                        "(yolox_l.torchscript.pt, dw-ll_ucoco_384_bs5.torchscript.pt) via torch. No mmcv/mmpose. "
                        "Several people per frame. Cached by frame content.",
            inputs=[io.Image.Input("images", tooltip="Frames (a video as an IMAGE batch, or one photo)."),
                    io.Combo.Input("detector", options=det or ["yolox_l.onnx"], default="yolox_l.onnx" if "yolox_l.onnx" in det else None,
                                   tooltip="Person detector in models/performer/pose (yolox_l.onnx or yolox_l.torchscript.pt)."),
                    io.Combo.Input("estimator", options=est or ["dw-ll_ucoco_384.onnx"],
                                   default="dw-ll_ucoco_384.onnx" if "dw-ll_ucoco_384.onnx" in est else None,
                                   tooltip="Whole-body estimator in models/performer/pose (dw-ll_ucoco_384.onnx or "
                                           "dw-ll_ucoco_384_bs5.torchscript.pt)."),
                    io.Float.Input("fps", default=8.0, min=0.1, max=240.0, step=0.1, tooltip="Frame rate of the frames."),
                    io.Int.Input("max_people", default=4, min=1, max=64, tooltip="Most people kept per frame (highest scores first).")],
            outputs=[POSE.Output(display_name="pose", tooltip="PERFORMER_POSE; frames without a person have absent points.")],
        )

    @classmethod
    def execute(cls, images, detector, estimator, fps, max_people) -> io.NodeOutput:
        from ..models.pose.extract import CACHE, DWPoseExtractor, require_person
        from ._common import resolve

        ex = DWPoseExtractor(resolve(detector, ("performer_pose",)), resolve(estimator, ("performer_pose",)), max_people=max_people)
        pose = CACHE.extract(ex, _frames(images), fps, callback=Progress(images.shape[0]))
        pose = require_person(pose, "images")
        return io.NodeOutput(pose, ui=preview("pose", images=images, pose=pose))


class PerformerExtractPoseOpenPose(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="PerformerExtractPoseOpenPose", display_name="Extract Pose (OpenPose, controlnet-aux) 🎭", category=CAT,
            description="CMU OpenPose body/hands/face through controlnet-aux, with the annotator weights body_pose_model.pth, "
                        "hand_pose_model.pth and facenet.pth (lllyasviel/Annotators) placed in models/performer/pose. "
                        "Loaded weights-only; nothing is downloaded. Cached by frame content.",
            inputs=[io.Image.Input("images", tooltip="Frames (a video as an IMAGE batch, or one photo)."),
                    io.Float.Input("fps", default=8.0, min=0.1, max=240.0, step=0.1, tooltip="Frame rate of the frames."),
                    io.Boolean.Input("hands", default=True, tooltip="Detect hands (needs hand_pose_model.pth)."),
                    io.Boolean.Input("face", default=True, tooltip="Detect face landmarks (needs facenet.pth)."),
                    io.Int.Input("max_people", default=4, min=1, max=64, tooltip="Most people kept per frame.")],
            outputs=[POSE.Output(display_name="pose", tooltip="PERFORMER_POSE; frames without a person have absent points.")],
        )

    @classmethod
    def execute(cls, images, fps, hands, face, max_people) -> io.NodeOutput:
        import folder_paths

        from ..models.errors import MissingModelError
        from ..models.pose.extract import CACHE, OPENPOSE_FILES, OpenPoseExtractor, require_person

        dirs = [d for d in folder_paths.get_folder_paths("performer_pose") if os.path.isfile(os.path.join(d, OPENPOSE_FILES["body"]))]
        if not dirs:
            raise MissingModelError("performer_pose", list(OPENPOSE_FILES.values()), folder_paths.get_folder_paths("performer_pose"),
                                    "OpenPose annotator weights (lllyasviel/Annotators).")
        ex = OpenPoseExtractor(dirs[0], hands=hands, face=face, max_people=max_people)
        pose = CACHE.extract(ex, _frames(images), fps, callback=Progress(images.shape[0]))
        pose = require_person(pose, "images")
        return io.NodeOutput(pose, ui=preview("pose", images=images, pose=pose))


class PerformerDensePose(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        from ._common import weight_choices

        ts = [f for f in weight_choices("performer_pose", with_dirs=False) if f.endswith((".torchscript", ".pt"))]
        return io.Schema(
            node_id="PerformerDensePose", display_name="DensePose IUV Maps 🎭", category=CAT,
            description="DensePose part maps from a TorchScript DensePose model (e.g. densepose_r50_fpn_dl.torchscript) in "
                        "models/performer/pose, coloured as the ComfyUI DensePose preprocessor does (PARULA parts; viridis "
                        "background for MagicAnimate), plus the raw IUV map.",
            inputs=[io.Image.Input("images", tooltip="Frames."),
                    io.Combo.Input("model", options=ts or ["densepose_r50_fpn_dl.torchscript"], tooltip="TorchScript DensePose model."),
                    io.Combo.Input("cmap", options=["viridis", "parula"], default="viridis",
                                   tooltip="viridis: MagicAnimate's dark-purple background; parula: black background.")],
            outputs=[io.Image.Output(display_name="densepose", tooltip="Coloured DensePose maps, one per frame."),
                     io.Image.Output(display_name="iuv", tooltip="Raw IUV: R = part/24, G = U, B = V (0 outside people).")],
        )

    @classmethod
    def execute(cls, images, model, cmap) -> io.NodeOutput:
        import comfy.model_management as mm

        from ..models.pose.densepose import DensePoseExtractor
        from ._common import resolve

        ex = DensePoseExtractor(resolve(model, ("performer_pose",)), device=str(mm.get_torch_device()))
        colour, iuv = ex(_frames(images), cmap=cmap, callback=Progress(images.shape[0]))
        return io.NodeOutput(torch.from_numpy(colour).float() / 255.0, torch.from_numpy(iuv))


class PerformerSelectReferenceFrame(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="PerformerSelectReferenceFrame", display_name="Select Reference Frame (PoseCrafter) 🎭", category=CAT,
            description="Picks the training frame whose pose is nearest to the target poses (normalised body coordinates, "
                        "only joints visible in both), as PoseCrafter does before inverting it.",
            inputs=[POSE.Input("training_poses", tooltip="Poses of the training video frames."),
                    POSE.Input("target_poses", tooltip="The driving poses to generate."),
                    io.Image.Input("training_images", optional=True, tooltip="The training frames; the chosen one is returned.")],
            outputs=[io.Int.Output(display_name="index", tooltip="Index of the chosen training frame."),
                     io.Image.Output(display_name="image", tooltip="The chosen training frame (empty 1×1 image when no frames are given)."),
                     POSE.Output(display_name="pose", tooltip="The chosen frame's pose.")],
        )

    @classmethod
    def execute(cls, training_poses, target_poses, training_images=None) -> io.NodeOutput:
        from ..models.errors import BadInputError
        from ..models.pose.sequence import nearest_frame

        i = nearest_frame(training_poses, target_poses)
        if training_images is not None:
            if training_images.shape[0] != training_poses.frames:
                raise BadInputError(f"training_images has {training_images.shape[0]} frames but training_poses has "
                                    f"{training_poses.frames}; they must describe the same video.")
            img = training_images[i:i + 1]
        else:
            img = torch.zeros(1, 1, 1, 3)
        return io.NodeOutput(i, img, training_poses.copy(keypoints=training_poses.keypoints[i:i + 1].copy()))


NODES = [PerformerExtractPoseMediaPipe, PerformerPoseFrames, PerformerFaceCrops, PerformerDensePose, PerformerSelectReferenceFrame, PerformerExtractPoseDWPose, PerformerExtractPoseOpenPose, PerformerPoseFromKeypoints, PerformerPoseToKeypoints, PerformerLoadPose, PerformerSavePose, PerformerCleanPose,
         PerformerRetargetPose, PerformerDrawPose]
