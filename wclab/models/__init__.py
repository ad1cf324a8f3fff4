"""The models WorldCanvas runs: DiT experts with hook points, umT5 text encoder, Wan VAE, flow-match scheduler.

Loading a whole set from a checkpoint folder: `wclab.models.loading.load_models` (also ``wclab.load_models``); the
released file layout is `wclab.models.layout`, the expected key/shape tables `wclab.models.shapes` (derived from
the config classes), header reading `wclab.models.headers`; ``python -m wclab.checkpoints DIR`` checks a folder.
"""
from wclab.models.dit import DiT, DiTConfig
from wclab.models.scheduler import FlowMatchScheduler
from wclab.models.text_encoder import TextEncoder, Tokenizer
from wclab.models.vae import VAE

__all__ = ["DiT", "DiTConfig", "FlowMatchScheduler", "TextEncoder", "Tokenizer", "VAE"]
