"""The models WorldCanvas runs: DiT experts with hook points, umT5 text encoder, Wan VAE, flow-match scheduler."""
from wclab.models.dit import DiT, DiTConfig
from wclab.models.loading import Models, load_models
from wclab.models.scheduler import FlowMatchScheduler
from wclab.models.text_encoder import TextEncoder, Tokenizer
from wclab.models.vae import VAE

__all__ = ["DiT", "DiTConfig", "FlowMatchScheduler", "Models", "TextEncoder", "Tokenizer", "VAE", "load_models"]
