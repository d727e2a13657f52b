"""The project's own tokenizer: a byte-level BPE trained locally with Qwen2's pre-tokenizer.

Using Qwen2's split regex, byte-level encoding without its own regex and NFC normalisation keeps token ids
identical when transformers 5 loads the folder as a Qwen2 tokenizer (it swaps in that pre-tokenizer).
Decision words, tags and placeholders are added with ``add_tokens`` so a real Qwen2.5 tokenizer gets
exactly the same treatment as the tiny one.
"""
from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers
from transformers import AutoTokenizer, PreTrainedTokenizerBase, PreTrainedTokenizerFast

from ..core.vocabulary import ANSWER_CLOSE, ANSWER_OPEN, THINK_CLOSE, THINK_OPEN, DecisionVocabulary
from .prompts import EGO_TOKEN, IMAGE_TOKEN, QUERY_TOKEN, corpus_sentences

QWEN2_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
EOS = "<|endoftext|>"
CONTROL_TOKENS = (IMAGE_TOKEN, EGO_TOKEN, QUERY_TOKEN)
TAG_TOKENS = (THINK_OPEN, THINK_CLOSE, ANSWER_OPEN, ANSWER_CLOSE)


def train_tokenizer(corpus: Iterable[str], vocab_size: int = 800) -> PreTrainedTokenizerFast:
    """Train a byte-level BPE on ``corpus`` (vocab_size is an upper bound: small corpora stop early)."""
    tok = Tokenizer(models.BPE())
    tok.normalizer = normalizers.NFC()
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(QWEN2_SPLIT), behavior="isolated", invert=False),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ])
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=[EOS], initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(corpus, trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token=EOS, pad_token=EOS)


def policy_tokens(vocab: DecisionVocabulary) -> list[str]:
    """Every token the policy adds: placeholders, tags and the decision words."""
    return [*CONTROL_TOKENS, *TAG_TOKENS, *vocab.words]


def add_policy_tokens(tokenizer: PreTrainedTokenizerBase, vocab: DecisionVocabulary) -> list[str]:
    """Add placeholders (special) and decision words + tags (plain, so they decode as text). Returns new tokens."""
    before = set(tokenizer.get_vocab())
    tokenizer.add_special_tokens({"additional_special_tokens": list(CONTROL_TOKENS)})
    tokenizer.add_tokens(list(TAG_TOKENS) + list(vocab.words))
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return [t for t in tokenizer.get_vocab() if t not in before]


def token_pieces(tokenizer: PreTrainedTokenizerBase, tokens: Iterable[str]) -> dict[str, list[int]]:
    """How ``tokenizer`` spells each token as text before it is added ("LEFT_TURN" as " left turn"): a
    pretrained model's new rows start from these pieces' embeddings, so no two decision words start alike."""
    def text(token: str) -> str:
        return token if token.startswith("<") else " " + token.lower().replace("_", " ")
    return {t: tokenizer.encode(text(t), add_special_tokens=False) for t in tokens}


def load_tokenizer(path: str | Path) -> PreTrainedTokenizerBase:
    return AutoTokenizer.from_pretrained(str(path), local_files_only=True)


def default_corpus() -> list[str]:
    """Text the tiny model must tokenize well: prompts, navigation instructions, numbers, reasoning."""
    return corpus_sentences()
