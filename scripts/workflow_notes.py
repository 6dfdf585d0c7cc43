"""What each bundled workflow's note says (scripts/api_to_ui.py puts it on the canvas as a Note node)."""

MODELS_SD15 = ("Models: pick your own files in the loaders. Backbone: an SD1.5 checkpoint in models/checkpoints "
               "(e.g. v1-5-pruned-emaonly.safetensors) or a diffusers folder in models/diffusers. Motion module: "
               "mm_sd_v15_v2.ckpt (or a diffusers MotionAdapter folder) in models/animatediff_models.")

NOTES = {
    "performer_animatediff_reference_controlnet": (
        "Photo → AnimateDiff + causal reference attention (SCD) + ControlNet openpose.\n\n" + MODELS_SD15 +
        " ControlNet: control_v11p_sd15_openpose.pth/.safetensors in models/controlnet.\n\n"
        "Change: the reference photo (Load Image), the driving skeleton frames, frames/steps/cfg on Animate. "
        "Sampler Options sets the reference strength, windows (16/8) and the CFG handling of the reference."),
    "performer_svd_posecontroller_identity": (
        "Photo → Stable Video Diffusion + VividPose pose controller + identity (CLIP + ArcFace).\n\n"
        "Models: an SVD checkpoint (svd_xt.safetensors) in models/checkpoints; a pose controller and an identity "
        "adapter trained with this pack in models/performer/adapters; CLIP vision in models/clip_vision; an ArcFace "
        "ONNX file (e.g. w600k_r50.onnx) in models/performer/face.\n\n"
        "Change: the reference photo, the skeleton frames (and SMPL-X renders, if you have them), frames and steps."),
    "performer_pose_extract_retarget": (
        "Photo + driving video → whole-body poses (MediaPipe, offline) → cleaned, retargeted to the reference's "
        "proportions → skeleton maps.\n\nNo model files needed: MediaPipe's models ship in its wheel. "
        "Click a joint in a preview to read its name and confidence; drag the scrubber to move through frames."),
    "performer_pose_retarget": (
        "Saved poses (OpenPose JSON or the pack's pose JSON, in ComfyUI/input) → clean → retarget → skeleton maps "
        "and a saved pose file.\n\nChange: the two pose files; Retarget's size (reference or driving canvas)."),
    "performer_body_from_poses": (
        "Poses → SMPL-X bodies fitted by optimisation → the reference person's shape → renders and 3D human flow.\n\n"
        "Body model: SMPLX_NEUTRAL.npz in models/performer/body (or the embedded procedural stand-in, not SMPL-X)."),
    "performer_posecrafter_personalise": (
        "PoseCrafter, one-shot: personalise the motion/key-frame attention on ~8 frames of one video, then animate "
        "new poses with reference-frame selection, inversion, key-frame insertion and latent face/hand editing.\n\n"
        + MODELS_SD15 + " ControlNet openpose in models/controlnet.\n\n"
        "Change: the training video, Personalise's steps (300 is the paper's setting; the workflow uses a few), the target poses."),
    "performer_ivr_refine": (
        "DiffPerformer: animate, then refine with an implicit video representation (hash-grid canonical + deformation "
        "field) and the loop re-noise → re-denoise → refit, with the 3D-aware human flow of the fitted bodies.\n\n"
        + MODELS_SD15 + " ControlNet openpose in models/controlnet (the skeleton maps guide the animation and every "
        "re-generation).\n\nChange: total IVR steps, refresh interval and noise strengths on Refine (IVR). "
        "The preview shows every refresh; pick one in its list."),
    "performer_demo_synthetic": (
        "The demo (make demo): a synthetic performer from the evaluation range (the pack generates it, with ground "
        "truth) animated from its first frame and its poses by the small model trained only on the training range "
        "(causal reference attention, the reference with its own skeleton and SMPL-X render; pose guidance from "
        "skeletons and SMPL-X semantic renders of its bodies), then scored against the ground truth (PSNR, SSIM, "
        "mask IoU, face PSNR, per-part colour distance, flow end-point error, warping error, flicker).\n\n"
        "Models: assets/demo_models of this repository, copied by make demo into diffusers/, animatediff_models/ and "
        "performer/adapters/. Change the performer's seed, character (identity) or motion; keep both seeds at "
        "1000000 or above for people and scenes the demo model never saw."),
    "performer_native_sd15_reference": (
        "Native: causal reference attention (SCD) on the MODEL your own loader gives, sampled by core's KSampler; "
        "core samplers, previews and memory management stay yours. Apply Causal Reference returns a patched "
        "copy; the reference passes once per run through the same model at t = 0.\n\n"
        "Models: any SD1.5 checkpoint in models/checkpoints (e.g. v1-5-pruned-emaonly.safetensors); the test file "
        "named here is a random-weight stand-in.\n\n"
        "Change: the reference photo (scaled to the video size), strength, the frame count (batch), prompts, steps."),
    "performer_native_ivr_refine": (
        "Native DiffPerformer: your SD1.5 checkpoint with causal reference attention (SCD) and the pack's pose "
        "guidance, sampled by core's KSampler, then Refine with IVR (native): the video is distilled into an implicit "
        "video representation with the 3D-aware human flow of the fitted bodies, and re-noised and re-denoised by "
        "core sampling with the same patched MODEL and conditioning (a ControlNet in the conditioning applies too), "
        "with live previews.\n\n"
        "Models: an SD1.5 checkpoint in models/checkpoints (the test file named here is a random-weight stand-in); a "
        "pose controller in models/performer/adapters.\n\n"
        "Change: the reference photo, the driving poses, total IVR steps, refresh interval and noise strengths."),
    "performer_native_ade_reference": (
        "Native + AnimateDiff-Evolved: your SD1.5 checkpoint with a LoRA, an AnimateDiff motion model injected by "
        "AnimateDiff-Evolved with its sliding context windows (12 frames in windows of 8), causal reference attention "
        "(SCD) and the pack's pose guidance, sampled by core's KSampler. The reference passes once per run, not per "
        "window; each window gets the poses of its own frames.\n\n"
        "Needs ComfyUI-AnimateDiff-Evolved. Models: an SD1.5 checkpoint in models/checkpoints, a LoRA in models/loras, "
        "mm_sd_v15_v2 in models/animatediff_models, a pose controller in models/performer/adapters (the files named "
        "here are random-weight test stand-ins). Core's ControlNet nodes do not support ADE's sliding windows (ADE "
        "refuses them; Advanced-ControlNet's do), so pose control here is Apply Pose Guidance.\n\n"
        "Change: the reference photo, the skeleton frames, the batch size (frames), context length/overlap, steps."),
    "performer_native_champ": (
        "Champ with its released weights, natively: the reference photo and a driving pose sequence. Bodies are fitted "
        "to both, the driving bodies take the reference's shape and are rendered in Champ's conventions (depth, "
        "normal, semantic map; the skeleton drawn from the same bodies), Champ's four guidance encoders add them after "
        "conv_in, the ReferenceNet carries the reference's look (Apply Causal Reference's reference_model), Champ's "
        "denoising UNet samples with its motion module (AnimateDiff-Evolved) and CLIP-image conditioning.\n\n"
        "Models (fudan-generative-vision/champ): denoising_unet.pth and reference_unet.pth in models/diffusion_models; "
        "motion_module.pth in models/animatediff_models; guidance_encoder_{depth,normal,semantic_map,dwpose}.pth in "
        "models/performer/adapters; an SD1.5 checkpoint for the VAE and the UNet layout (Champ uses sd-vae-ft-mse); "
        "the image encoder of lambdalabs/sd-image-variations-diffusers (CLIP ViT-L/14) in models/clip_vision; an SMPL-X "
        "body model in models/performer/body for real bodies (the files named here are random-weight test stand-ins). "
        "v-prediction with zero terminal SNR as Champ was trained (ModelSamplingDiscrete); the motion module keeps "
        "that schedule (use existing).\n\n"
        "Change: the reference photo (scaled to the video size; Champ: 512 x 512), the driving poses and frames, the "
        "body model and fitting iterations, steps (Champ: 20) and cfg (3.5)."),
    "performer_native_mimicmotion": (
        "MimicMotion on the SVD MODEL (released weights): SVD-xt 1.1 through core's loader and conditioning, "
        "MimicMotion's finetuned UNet as weight patches (Apply MimicMotion UNet) and its PoseNet on the pose images "
        "(Apply PoseNet, conditional half only, red-blue swapped colours as MimicMotion draws them), core's KSampler at "
        "MimicMotion's CFG 2.\n\n"
        "Models: svd_xt_1_1.safetensors in models/checkpoints; MimicMotion_1-1.pth (tencent/MimicMotion) in "
        "models/performer/adapters, read by both nodes (the files named here are random-weight test stand-ins).\n\n"
        "Poses: as in MimicMotion, frame 0 is the reference photo's own pose and the video's first frame is the "
        "reference (drop it after decoding); fps 7 as MimicMotion conditions SVD. Change: the reference photo, the "
        "pose frames, video_frames (MimicMotion: 72 per tile at 576 x 1024), steps (25)."),
    "performer_native_svd_reference_pose": (
        "Native SVD: your SVD checkpoint through core's loader and conditioning, causal reference attention (SCD) and "
        "the pack's pose guidance on the MODEL, core's KSampler with linear CFG. The reference passes once per run; "
        "both CFG halves read it (SVD's default); each frame gets its own pose features.\n\n"
        "Models: an SVD checkpoint (svd_xt.safetensors) in models/checkpoints, a pose controller in "
        "models/performer/adapters (the files named here are random-weight test stand-ins).\n\n"
        "Change: the reference photo (scaled to the video size), the skeleton frames, video_frames, steps."),
    "performer_native_wan_animate_reference": (
        "Native Wan 2.2 Animate: your Wan-Animate model through core's loaders and WanAnimateToVideo, with causal "
        "reference attention (SCD) on the MODEL: the reference photo passes once per sampling run through the same DiT "
        "(one latent frame before the video in RoPE time) and every block's video tokens also attend to it. The driving "
        "poses are retargeted to the reference's proportions and drawn as Wan-Animate's pose video (OpenPose colours, "
        "hands, no face dots). The decoded video is then refined by Refine with IVR (native) on the same patched MODEL, "
        "with the 3D-aware flow of bodies in the reference's shape.\n\n"
        "Models: wan2.2_animate_14B_bf16.safetensors in models/diffusion_models, umt5_xxl_fp8_e4m3fn_scaled.safetensors "
        "in models/text_encoders, wan_2.1_vae.safetensors in models/vae, clip_vision_h.safetensors in "
        "models/clip_vision (Comfy-Org's repackaged files; the test machines use tiny random stand-ins).\n\n"
        "Change: the reference photo and size (832×480 for real use), the driving poses (Extract Pose → Save Pose, or "
        "connect Extract Pose here), Pose Frames' range (Wan needs 4k+1 frames: 77 or 81), steps, IVR steps."),
    "performer_text2video_smoke": (
        "The smallest check that a pipe loads and samples: text → AnimateDiff video, no reference.\n\n" + MODELS_SD15),
}
