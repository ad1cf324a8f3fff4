"""Look inside a session: attention maps per object, latents along trajectories, ablations, activation patching,
when motion is decided, metrics, display.

Data flows one way: a :class:`wclab.sampler.Session` runs; these functions and classes read it (through hooks
and its recorded history) and never change what it generates; activation patching makes new runs (branches)
and leaves the sessions it is given as they were.
"""
from wclab.inspect.ablations import (AblationResult, Variant, anchor_variants, base_variant, beta_variants,
                                     caption_variants, density_variants, run_ablations, sampling_variants,
                                     uncaption, visibility_variants)
from wclab.inspect.attention import (AttentionMaps, InspectError, SpanMass, cross_attention_hooks, span_mass,
                                    span_selector)
from wclab.inspect.concept_maps import (Concept, ConceptMaps, ConceptMass, concept_hooks, concept_projections,
                                       encode_concept, overlap_curves, plot_overlap_curves)
from wclab.inspect.decision import decision_timeline, latent_cell_masks, plot_decision_timeline
from wclab.inspect.display import (expand_latent_frames, heatmap_overlay, mask_overlay, overlay_trajectories,
                                   plot_heatmaps, plot_step_grid, plot_trajectories, save_video, show_video,
                                   show_videos, upsample, video_grid)
from wclab.inspect.motion_maps import MotionMaps, QueryRowMass, self_attention_hooks, trajectory_token_mask
from wclab.inspect.metrics import (drawn_frame, lk_tracker, mask_mass_fraction, pairwise_pixel_difference,
                                   pixel_difference, timing_comparison, timing_lag, track_trajectories,
                                   trajectory_following_error, trajectory_timing)
from wclab.inspect.patching import Patch, PatchResult, as_patches, patch, patch_sweep, plot_patch_sweep
from wclab.inspect.trajectory_latents import (TrajectorySamples, condition_videos, latent_path, path_crops,
                                              sample_trajectories, token_mask_stats, video_crops)

__all__ = [
    "AblationResult", "AttentionMaps", "MotionMaps", "QueryRowMass", "self_attention_hooks", "trajectory_token_mask",
    "Concept", "ConceptMaps", "ConceptMass", "concept_hooks", "concept_projections", "encode_concept", "overlap_curves",
    "plot_overlap_curves", "InspectError", "SpanMass", "span_mass", "span_selector", "TrajectorySamples",
    "Variant",
    "anchor_variants", "base_variant", "decision_timeline", "latent_cell_masks", "plot_decision_timeline", "beta_variants", "caption_variants", "condition_videos", "cross_attention_hooks",
    "density_variants",
    "expand_latent_frames", "heatmap_overlay", "latent_path", "lk_tracker", "mask_mass_fraction", "mask_overlay",
    "overlay_trajectories", "pairwise_pixel_difference", "Patch", "PatchResult", "as_patches", "patch",
    "patch_sweep", "plot_patch_sweep", "path_crops", "pixel_difference", "plot_heatmaps",
    "plot_step_grid", "plot_trajectories", "run_ablations", "sample_trajectories", "save_video", "show_video",
    "show_videos", "token_mask_stats", "track_trajectories", "trajectory_following_error", "uncaption", "upsample",
    "drawn_frame", "sampling_variants", "timing_comparison", "timing_lag", "trajectory_timing",
    "video_crops", "video_grid", "visibility_variants",
]
