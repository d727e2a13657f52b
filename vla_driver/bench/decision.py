"""Single-pass candidate scoring vs autoregressive ``generate`` of the same answer, same model and input.

Two generate variants, both on the decision adapter with the KV cache, forced to emit exactly the answer's
number of tokens (an untrained model would otherwise stop early or ramble):

* ``answer words``: the prompt already ends in the forced ``<think></think><answer>`` (as the single pass
  sees it); generate ``SPEED, PATH</answer>``. The headline ``speedup``.
* ``whole response``: generate everything after the prompt, ``<think></think><answer>SPEED, PATH</answer>``,
  as an AlphaDrive-style decoder must.

The breakdown (one prompt prefill, one cached decode step) shows the bound on this machine: generating k
tokens costs about prefill + (k - 1) steps, the single pass about one prefill of a slightly longer input.
"""
from __future__ import annotations

from functools import partial

import torch

from ..core.vocabulary import parse_answer
from ..model.prompts import fast_answer_prefix
from ..runtime.loading import load_policy
from . import emit, percentiles, time_calls
from .backends import frame_for_bench


def run(checkpoint: str = "", iters: int = 50, threads: int = 2) -> dict:
    policy = load_policy(checkpoint, backend="torch", threads=threads)
    obs = frame_for_bench(policy)
    model, enc, tok = policy.model, policy.encoder, policy.model.tokenizer
    words = f"{policy.vocab.speeds[0]}, {policy.vocab.paths[0]}</answer>"
    images, ego = enc.images([obs]), enc.ego([obs])
    forced = torch.tensor(enc.decision_rows([obs]))  # prompt + <think></think><answer>
    bare = torch.tensor([enc.prompt_ids(obs)])
    # name -> (prompt ids, tokens to generate, what the prompt already holds of the answer, for the parser)
    variants = {"answer words": (forced, len(enc.ids(words)), "<answer>"),
                "whole response": (bare, len(enc.ids(fast_answer_prefix() + words)), "")}

    single = policy.decide(obs)
    print(f"single pass: {single.decision.speed}, {single.decision.path} "
          f"(p={single.probs.max():.3f}, full {policy.vocab.num_candidates}-candidate table)")
    timings = {"single pass": time_calls(lambda: policy.decision_table([obs]), iters)}
    for name, (ids, new_tokens, prefix) in variants.items():
        generate = partial(policy.generate_ids, obs, ids[0].tolist(), new_tokens, set())
        text = tok.decode(generate())
        print(f"generate ({name}): {text!r} ({new_tokens} new tokens, one answer, no table)")
        try:
            parse_answer(prefix + text, policy.vocab)
        except ValueError as err:  # free generation can leave the grammar; scoring cannot
            print(f"  not a valid answer: {err}")
        timings[f"generate, {name}"] = time_calls(generate, iters)

    @torch.inference_mode()
    def prefill_and_step():
        model.select_adapter("decision")
        embeds = model.embed_prompt(images, ego, forced)
        out = model.llm(inputs_embeds=embeds, use_cache=True)
        step = model.embed_tokens(out.logits[:, -1:].argmax(-1))
        return out.past_key_values, step

    cache, step_embeds = prefill_and_step()
    prefill_ms = time_calls(prefill_and_step, iters)
    step_ms = time_calls(lambda: _one_step(model, step_embeds, cache), iters)

    stats = {name: percentiles(ms) for name, ms in timings.items()}
    print(f"{'path':<26}{'p50 ms':>10}{'p99 ms':>10}{'ratio':>8}")
    base = stats["single pass"]["p50"]
    for name, s in stats.items():
        print(f"{name:<26}{s['p50']:>10.2f}{s['p99']:>10.2f}{s['p50'] / base:>8.2f}")
    p, d = percentiles(prefill_ms)["p50"], percentiles(step_ms)["p50"]
    print(f"breakdown: prompt prefill {p:.2f} ms, one cached decode step {d:.2f} ms "
          f"({d / p:.2f} of a prefill): k generated tokens cost about prefill + (k - 1) steps")
    words_ms, whole_ms = stats["generate, answer words"], stats["generate, whole response"]
    record = {"bench": "decision", "single_pass_ms_p50": base, "single_pass_ms_p99": stats["single pass"]["p99"],
              "generate_ms_p50": words_ms["p50"], "generate_ms_p99": words_ms["p99"],
              "speedup": words_ms["p50"] / base,
              "generate_whole_response_ms_p50": whole_ms["p50"], "speedup_whole_response": whole_ms["p50"] / base,
              "answer_tokens": variants["answer words"][1], "response_tokens": variants["whole response"][1],
              "prefill_ms_p50": p, "decode_step_ms_p50": d, "threads": threads, "iters": iters}
    emit(record)
    return record


@torch.inference_mode()
def _one_step(model, embeds: torch.Tensor, cache):
    """One cached decode step, its new entry cropped off again so that every timing sees the same cache."""
    out = model.llm(inputs_embeds=embeds, past_key_values=cache, use_cache=True)
    cache.crop(-embeds.shape[1])
    return out.logits
