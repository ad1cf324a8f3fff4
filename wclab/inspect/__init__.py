"""Look inside a session: attention maps per object, latents along trajectories, ablations, metrics, display."""
from wclab.inspect.attention import AttentionMaps, InspectError

__all__ = ["AttentionMaps", "InspectError"]
