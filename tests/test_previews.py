"""Live latent previews from the pack's own pipe (issue 18), as core's KSampler shows them: the sampling node's progress
callback carries core's previewer and gets the step's predicted clean latents once per step."""
import torch

import tiny_models as tm

tm.ensure_comfy_importable()


def test_pipe_sampling_sends_one_latent_preview_per_step(ad):
    import comfy.utils
    from comfy.cli_args import LatentPreviewMethod, args

    from performer_pkg.models.sampling.sampler import VideoSettings, encode_reference, sample_video
    from performer_pkg.nodes._common import Progress

    sent = []
    old_hook, old_method = comfy.utils.PROGRESS_BAR_HOOK, args.preview_method
    comfy.utils.set_progress_bar_global_hook(lambda value, total, preview, node_id=None: sent.append((value, total, preview)))
    args.preview_method = LatentPreviewMethod.Latent2RGB
    try:
        steps = 3
        ref = encode_reference(ad, torch.rand(1, 32, 32, 3, generator=torch.Generator().manual_seed(0)))
        progress = Progress(steps).with_previews(ad)
        sample_video(ad, VideoSettings(frames=2, width=32, height=32, steps=steps, seed=1), ref, callback=progress)
    finally:
        comfy.utils.set_progress_bar_global_hook(old_hook)
        args.preview_method = old_method
    previews = [p for _, _, p in sent if p is not None]
    assert progress.previews == steps and len(previews) == steps
    fmt, image, _ = previews[0]
    assert fmt == "JPEG" and image.size == (16, 16)  # the first frame of the latent (32 px / the tiny VAE's 2)
    assert [v for v, _, p in sent if p is None] == [1, 2, 3]  # the progress itself is unchanged
