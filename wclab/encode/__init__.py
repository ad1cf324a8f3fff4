"""Scene → model inputs: trajectory channels and token masks, caption spans, cross-attention bias."""
from wclab.encode.bias import BiasSpec, cross_attention_bias, negative_bias
from wclab.encode.channels import ConditionTensors, encode_conditions, gaussian_template
from wclab.encode.spans import caption_spans, word_spans

__all__ = [
    "BiasSpec",
    "ConditionTensors",
    "caption_spans",
    "cross_attention_bias",
    "encode_conditions",
    "gaussian_template",
    "negative_bias",
    "word_spans",
]
