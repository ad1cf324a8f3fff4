"""umT5 text encoder (transformers ``UMT5EncoderModel``) loaded from Wan's original ``.pth`` checkpoint.

Wan encodes every prompt to a fixed 512-token context: the prompt is cleaned (ftfy, html unescape, whitespace
collapse), tokenized with padding/truncation to 512, run through the umT5 encoder, and the embeddings past each
sequence's length are set to zero.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from wclab.encode.text import TEXT_LEN, clean_text
from wclab.errors import CheckpointError, WclabError
from wclab.models.device import check_device
from wclab.models.weights import read_state_dict

# The standard Chinese negative prompt Wan models are sampled with (SPEC §3, golden_units.json).
DEFAULT_NEGATIVE_PROMPT = (
    "色调艳丽，过曝，静态，细节模糊不清，字幕，风格，作品，画作，画面，静止，整体发灰，最差质量，低质量，JPEG压缩残留，"
    "丑陋的，残缺的，多余的手指，画得不好的手部，画得不好的脸部，畸形的，毁容的，形态畸形的肢体，手指融合，"
    "静止不动的画面，杂乱的背景，三条腿，背景人很多，倒着走"
)


# ----------------------------------------------------------------------------------------------- tokenizer
class Tokenizer:
    """HF (fast) tokenizer from a local folder; cleans texts and pads/truncates to ``text_len`` tokens."""

    def __init__(self, path: str | Path, text_len: int = TEXT_LEN, clean: bool = True):
        from transformers import AutoTokenizer

        path = Path(path)
        if not path.is_dir():
            raise CheckpointError(f"tokenizer folder not found: {path}")
        try:
            self.hf = AutoTokenizer.from_pretrained(str(path), use_fast=True)
        except (OSError, ValueError) as e:
            raise CheckpointError(f"cannot load tokenizer from {path}: {e}") from e
        self.path = path
        self.text_len = text_len
        self.clean = clean

    def prepare(self, texts: str | list[str]) -> list[str]:
        """The texts exactly as they are tokenized (cleaned when ``clean``)."""
        texts = [texts] if isinstance(texts, str) else list(texts)
        return [clean_text(t) for t in texts] if self.clean else texts

    def __call__(self, texts: str | list[str], return_offsets: bool = False):
        """``(ids [B, L] long, mask [B, L] long)``, L = ``text_len``; with ``return_offsets`` also
        ``offsets [B, L, 2] long``: character (start, end) of each token in the cleaned text ((0, 0) for
        special and padding tokens)."""
        enc = self.hf(
            self.prepare(texts), padding="max_length", truncation=True, max_length=self.text_len,
            add_special_tokens=True, return_tensors="pt", return_offsets_mapping=return_offsets,
        )
        ids, mask = enc["input_ids"].long(), enc["attention_mask"].long()
        if return_offsets:
            return ids, mask, enc["offset_mapping"].long()
        return ids, mask


# ----------------------------------------------------------------------------------------------- encoder
@dataclass
class TextEncoderConfig:
    """Wan's T5 constructor arguments (umT5-xxl defaults)."""

    vocab: int = 256384
    dim: int = 4096
    dim_attn: int = 4096
    dim_ffn: int = 10240
    num_heads: int = 64
    num_layers: int = 24
    num_buckets: int = 32
    shared_pos: bool = False
    max_distance: int = 128
    eps: float = 1e-6

    @classmethod
    def from_state_dict(cls, sd: dict[str, torch.Tensor], num_heads: int | None = None,
                        source: str = "state dict") -> TextEncoderConfig:
        """Infer the config from Wan key names and shapes; ``num_heads`` (if given) must match the bias table."""
        def need(key: str) -> torch.Tensor:
            if key not in sd:
                raise CheckpointError(f"{source}: missing key {key!r} (not a Wan T5 encoder checkpoint?)")
            return sd[key]

        vocab, dim = need("token_embedding.weight").shape
        shared_pos = "pos_embedding.embedding.weight" in sd
        pos_key = "pos_embedding.embedding.weight" if shared_pos else "blocks.0.pos_embedding.embedding.weight"
        num_buckets, heads = need(pos_key).shape
        if num_heads is not None and num_heads != heads:
            raise CheckpointError(f"{source}: num_heads={num_heads} but {pos_key} has {heads} heads")
        layers = {int(m.group(1)) for k in sd if (m := re.match(r"blocks\.(\d+)\.", k))}
        if not layers:
            raise CheckpointError(f"{source}: no 'blocks.N.*' keys")
        return cls(vocab=vocab, dim=dim, dim_attn=need("blocks.0.attn.q.weight").shape[0],
                   dim_ffn=need("blocks.0.ffn.fc1.weight").shape[0], num_heads=heads,
                   num_layers=max(layers) + 1, num_buckets=num_buckets, shared_pos=shared_pos)

    def to_hf(self):
        """The transformers ``UMT5Config`` of this encoder."""
        from transformers import UMT5Config  # transformers loads slowly: only when a model is built

        if self.dim_attn % self.num_heads:
            raise WclabError(f"dim_attn {self.dim_attn} is not divisible by num_heads {self.num_heads}")
        return UMT5Config(
            vocab_size=self.vocab, d_model=self.dim, d_kv=self.dim_attn // self.num_heads, d_ff=self.dim_ffn,
            num_heads=self.num_heads, num_layers=self.num_layers, relative_attention_num_buckets=self.num_buckets,
            relative_attention_max_distance=self.max_distance, feed_forward_proj="gated-gelu",  # gelu_new (tanh)
            dropout_rate=0.0, layer_norm_epsilon=self.eps, is_encoder_decoder=False, use_cache=False,
        )


def wan_t5_key_map(config: TextEncoderConfig) -> dict[str, list[str]]:
    """Wan T5 key -> the ``UMT5EncoderModel`` keys it fills, in Wan's file order. The token embedding fills the
    shared and the encoder embedding; a shared relative-position table (``shared_pos``) fills every block's (umT5
    keeps one per block)."""
    relative = "0.SelfAttention.relative_attention_bias.weight"
    keys = {"token_embedding.weight": ["shared.weight", "encoder.embed_tokens.weight"]}
    if config.shared_pos:
        keys["pos_embedding.embedding.weight"] = [f"encoder.block.{i}.layer.{relative}"
                                                  for i in range(config.num_layers)]
    for i in range(config.num_layers):
        b, hb = f"blocks.{i}.", f"encoder.block.{i}.layer."
        keys[b + "norm1.weight"] = [hb + "0.layer_norm.weight"]
        for p in "qkvo":
            keys[b + f"attn.{p}.weight"] = [hb + f"0.SelfAttention.{p}.weight"]
        keys[b + "norm2.weight"] = [hb + "1.layer_norm.weight"]
        keys[b + "ffn.gate.0.weight"] = [hb + "1.DenseReluDense.wi_0.weight"]
        keys[b + "ffn.fc1.weight"] = [hb + "1.DenseReluDense.wi_1.weight"]
        keys[b + "ffn.fc2.weight"] = [hb + "1.DenseReluDense.wo.weight"]
        if not config.shared_pos:
            keys[b + "pos_embedding.embedding.weight"] = [hb + relative]
    keys["norm.weight"] = ["encoder.final_layer_norm.weight"]
    return keys


def wan_t5_to_hf(sd: dict[str, torch.Tensor], config: TextEncoderConfig,
                 source: str = "state dict") -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Rename Wan T5 keys to ``UMT5EncoderModel`` keys (`wan_t5_key_map`); a missing or left-over key raises
    CheckpointError. Returns (HF state dict, HF key -> Wan key)."""
    out: dict[str, torch.Tensor] = {}
    origin: dict[str, str] = {}
    rest = dict(sd)
    for src, targets in wan_t5_key_map(config).items():
        if src not in rest:
            raise CheckpointError(f"{source}: missing key {src!r}")
        t = rest.pop(src)
        for d in targets:
            out[d], origin[d] = t, src
    if rest:
        raise CheckpointError(f"{source}: unexpected key {sorted(rest)[0]!r} ({len(rest)} unexpected in all)")
    return out, origin


def t5_shapes(config: TextEncoderConfig) -> dict[str, tuple[int, ...]]:
    """Wan T5 key -> shape of a checkpoint for ``config`` (``models_t5_umt5-xxl-enc-bf16.pth`` format), read off
    the umT5 model built on the meta device."""
    from transformers import UMT5EncoderModel

    with torch.device("meta"):
        hf = UMT5EncoderModel(config.to_hf()).state_dict()
    return {src: tuple(hf[targets[0]].shape) for src, targets in wan_t5_key_map(config).items()}


class TextEncoder(nn.Module):
    """umT5 encoder: ``forward(ids, mask) -> [B, L, dim]`` with embeddings past each sequence length zeroed."""

    def __init__(self, config: TextEncoderConfig, tokenizer: Tokenizer | None = None):
        super().__init__()
        from transformers import UMT5EncoderModel

        self.config = config
        self.tokenizer = tokenizer
        self.model = UMT5EncoderModel(config.to_hf()).eval().requires_grad_(False)

    @classmethod
    def from_checkpoint(cls, path: str | Path, tokenizer: Tokenizer | str | Path | None = None,
                        num_heads: int | None = None, device: str | torch.device = "cpu",
                        dtype: torch.dtype = torch.float32) -> TextEncoder:
        """Load Wan's ``models_t5_umt5-xxl-enc-bf16.pth`` (or a same-format file); strict key check.

        ``num_heads`` is read from the relative-position table; passing it only adds a consistency check."""
        check_device(device)
        sd = read_state_dict(path, what="T5 checkpoint")
        config = TextEncoderConfig.from_state_dict(sd, num_heads, source=str(path))
        hf_sd, origin = wan_t5_to_hf(sd, config, source=str(path))
        if tokenizer is not None and not isinstance(tokenizer, Tokenizer):
            tokenizer = Tokenizer(tokenizer)
        with torch.device("meta"):  # no full-size random init; weights are assigned below
            enc = cls(config, tokenizer)
        expected = enc.model.state_dict()
        for k, v in hf_sd.items():
            if tuple(v.shape) != tuple(expected[k].shape):
                raise CheckpointError(f"{path}: {origin[k]} has shape {tuple(v.shape)}, "
                                      f"expected {tuple(expected[k].shape)}")
        enc.model.load_state_dict({k: v.to(dtype) for k, v in hf_sd.items()}, strict=True, assign=True)
        enc.model.tie_weights()
        return enc.to(device)

    @property
    def device(self) -> torch.device:
        return self.model.shared.weight.device

    @property
    def dtype(self) -> torch.dtype:
        return self.model.shared.weight.dtype

    @torch.no_grad()
    def forward(self, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """ids, mask [B, L] long -> embeddings [B, L, dim] (model dtype), rows past ``mask.sum(1)`` zero."""
        ids, mask = ids.to(self.device), mask.to(self.device)
        emb = self.model(input_ids=ids, attention_mask=mask).last_hidden_state
        seq_lens = mask.gt(0).sum(dim=1)
        keep = torch.arange(ids.shape[1], device=ids.device)[None, :] < seq_lens[:, None]
        return emb.masked_fill(~keep[..., None], 0)

    def encode(self, texts: str | list[str]) -> torch.Tensor:
        """Prompt(s) -> context [B, text_len, dim] (cleaned, tokenized, encoded, padding zeroed)."""
        if self.tokenizer is None:
            raise WclabError("TextEncoder.encode needs a tokenizer: pass tokenizer= to from_checkpoint")
        ids, mask = self.tokenizer(texts)
        return self(ids, mask)
