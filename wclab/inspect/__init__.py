"""Look inside a session: attention maps per object, latents along trajectories, ablations, activation patching,
when motion is decided, metrics, display.

Data flows one way: a :class:`wclab.sampler.Session` runs; these functions and classes read it (through hooks
and its recorded history) and never change what it generates; activation patching makes new runs (branches)
and leaves the sessions it is given as they were.

Names are imported from their submodule on first use (``import wclab.inspect.display`` does not load the
plotting and table modules the others need).
"""
from __future__ import annotations

from wclab import _lazy_exports

_SUBMODULES = {
    "ablations": ("AblationResult", "Variant", "anchor_variants", "base_variant", "beta_variants",
                  "caption_variants", "density_variants", "run_ablations", "sampling_variants", "uncaption",
                  "visibility_variants"),
    "attention": ("AttentionMaps", "InspectError", "SpanMass", "cross_attention_hooks", "span_mass",
                  "span_selector"),
    "concept_maps": ("Concept", "ConceptMaps", "ConceptMass", "concept_hooks", "concept_projections",
                     "encode_concept", "overlap_curves", "plot_overlap_curves"),
    "decision": ("decision_timeline", "latent_cell_masks", "plot_decision_timeline"),
    "display": ("expand_latent_frames", "heatmap_overlay", "mask_overlay", "overlay_trajectories",
                "plot_heatmaps", "plot_step_grid", "plot_trajectories", "save_video", "show_video",
                "show_videos", "upsample", "video_grid"),
    "motion_maps": ("MotionMaps", "QueryRowMass", "self_attention_hooks", "trajectory_token_mask"),
    "metrics": ("drawn_frame", "lk_tracker", "mask_mass_fraction", "pairwise_pixel_difference",
                "pixel_difference", "timing_comparison", "timing_lag", "track_trajectories",
                "trajectory_following_error", "trajectory_timing"),
    "patching": ("Patch", "PatchResult", "as_patches", "patch", "patch_sweep", "plot_patch_sweep"),
    "trajectory_latents": ("TrajectorySamples", "condition_videos", "latent_path", "path_crops",
                           "sample_trajectories", "token_mask_stats", "video_crops"),
}
_EXPORTS = {name: f"wclab.inspect.{module}" for module, names in _SUBMODULES.items() for name in names}
__all__ = sorted(_EXPORTS)
__getattr__, __dir__ = _lazy_exports(__name__, _EXPORTS)
