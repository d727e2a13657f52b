"""Stand-ins for the car's pretrained models: Hugging Face directories with random weights.

No model hub is reachable here, but the architectures are: a directory written by :func:`make_llm_standin`
has Qwen2.5-0.5B's config (or a smaller one of the same structure), its weights in bf16 safetensors and a
Qwen2 tokenizer of the same vocabulary size, so loading, adapters, export and every cost are those of the
real model; only the accuracy is not. :func:`make_vision_standin` does the same for a SigLIP-base tower.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import safe_open
from tokenizers import AddedToken, Tokenizer
from transformers import (
    PreTrainedTokenizerFast,
    Qwen2Config,
    Qwen2ForCausalLM,
    SiglipVisionConfig,
    SiglipVisionModel,
)

from .tokenizer import EOS, default_corpus, train_tokenizer

QWEN_SPECIAL = (EOS, "<|im_start|>", "<|im_end|>")


@dataclass(frozen=True)
class LLMSize:
    """One Qwen2 shape. ``vocab_size`` is the embedding's row count; like Qwen2.5's, the tokenizer fills
    all but the last ``padding_rows`` of it, so added tokens take rows that already exist."""

    hidden: int
    intermediate: int
    layers: int
    heads: int
    kv_heads: int
    vocab_size: int
    padding_rows: int = 256


LLM_SIZES = {
    "tiny": LLMSize(64, 192, 2, 4, 2, 4096),  # the tests' stand-in: the same structure, seconds to build
    "30m": LLMSize(384, 1536, 8, 6, 2, 32768),
    "120m": LLMSize(640, 2560, 12, 10, 2, 65536),
    "0.5b": LLMSize(896, 4864, 24, 14, 2, 151936, padding_rows=271),  # Qwen2.5-0.5B: 151,665 tokens
}
VISION_SIZES = {
    "tiny": SiglipVisionConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                               image_size=64, patch_size=16),
    "vit-b": SiglipVisionConfig(hidden_size=768, intermediate_size=3072, num_hidden_layers=12,
                                num_attention_heads=12, image_size=224, patch_size=16),  # SigLIP-base, ~86 M
}


def standin_tokenizer(size: int) -> PreTrainedTokenizerFast:
    """The project's BPE (so prompts tokenize as the tiny model's do) with unreachable filler tokens up to
    ``size`` entries and Qwen's special tokens: the vocabulary size, and so the embedding, of the real one."""
    trained = json.loads(train_tokenizer(default_corpus(), 800).backend_tokenizer.to_str())
    vocab = trained["model"]["vocab"]
    trained["added_tokens"] = []
    for i in range(size - len(vocab) - len(set(QWEN_SPECIAL) - set(vocab))):
        vocab[f"\u0120filler{i}"] = len(vocab)  # no merge produces these: they never appear in an encoding
    tok = Tokenizer.from_str(json.dumps(trained))
    tok.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in QWEN_SPECIAL])
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token=EOS, pad_token=EOS,
                                   additional_special_tokens=list(QWEN_SPECIAL[1:]))


def make_llm_standin(out_dir: str | Path, size: str = "0.5b", seed: int = 0) -> Path:
    """A local Qwen2 directory as ``save_pretrained`` writes it (config, bf16 safetensors, tokenizer)."""
    s = LLM_SIZES[size]
    tokenizer = standin_tokenizer(s.vocab_size - s.padding_rows)
    torch.manual_seed(seed)
    config = Qwen2Config(vocab_size=s.vocab_size, hidden_size=s.hidden, intermediate_size=s.intermediate,
                         num_hidden_layers=s.layers, num_attention_heads=s.heads, num_key_value_heads=s.kv_heads,
                         max_position_embeddings=32768, rope_theta=1_000_000.0, rms_norm_eps=1e-6,
                         tie_word_embeddings=True, eos_token_id=tokenizer.eos_token_id,
                         bos_token_id=tokenizer.eos_token_id, torch_dtype="bfloat16")
    with torch.device("cpu"):
        model = Qwen2ForCausalLM(config).to(torch.bfloat16)
    out = Path(out_dir)
    model.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)
    config_path = out / "tokenizer_config.json"  # load it the way a real Qwen2.5 folder is loaded
    tok_config = json.loads(config_path.read_text())
    tok_config["tokenizer_class"] = "Qwen2Tokenizer"
    config_path.write_text(json.dumps(tok_config, indent=2))
    return out


def make_vision_standin(out_dir: str | Path, size: str = "vit-b", seed: int = 0) -> Path:
    """A local SigLIP vision tower directory (config + safetensors), what ``VisionConfig.pretrained_dir`` loads."""
    torch.manual_seed(seed)
    model = SiglipVisionModel(VISION_SIZES[size])
    out = Path(out_dir)
    model.save_pretrained(out, safe_serialization=True)
    return out


def parameter_count(model_dir: str | Path) -> int:
    """Parameters stored in a directory's safetensors files (tied embeddings counted once)."""
    total = 0
    for path in Path(model_dir).glob("*.safetensors"):
        with safe_open(str(path), "pt") as f:
            total += sum(torch.Size(f.get_slice(key).get_shape()).numel() for key in f.keys())
    return total
