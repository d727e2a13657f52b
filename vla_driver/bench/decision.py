"""Single-pass candidate scoring vs autoregressive ``generate`` of the same answer, same model and input."""
from __future__ import annotations

import torch

from . import emit, percentiles, time_calls


def run(checkpoint: str = "", iters: int = 50, threads: int = 2) -> dict:
    from ..core.vocabulary import parse_answer
    from ..runtime.policy import load_policy
    from ..sim.highway import DrivingSim

    policy = load_policy(checkpoint, backend="torch", threads=threads)
    sim = DrivingSim("highway", seed=100_000)
    obs = sim.reset()
    sim.close()
    model, enc, tok = policy.model, policy.encoder, policy.model.tokenizer
    answer_tokens = len(enc.ids(f"{policy.vocab.speeds[0]}, {policy.vocab.paths[0]}</answer>"))
    row = enc.decision_rows([obs])[0]
    ids = torch.tensor([row])
    images, ego = enc.images([obs]), enc.ego([obs])

    @torch.inference_mode()
    def generate():
        model.select_adapter("decision")
        embeds = model.embed_prompt(images, ego, ids)
        return model.llm.generate(inputs_embeds=embeds, attention_mask=torch.ones_like(ids),
                                  max_new_tokens=answer_tokens, do_sample=False,
                                  pad_token_id=tok.pad_token_id)

    generated = "<answer>" + tok.decode(generate()[0])
    single = policy.decide(obs)
    print(f"single pass: {single.decision.speed}, {single.decision.path} "
          f"(p={single.probs.max():.3f}, full {policy.vocab.num_candidates}-candidate table)")
    print(f"generate:    {generated!r} ({answer_tokens} new tokens, one answer, no table)")
    try:
        parse_answer(generated, policy.vocab)
    except ValueError as err:  # an untrained model may emit text outside the grammar; scoring cannot
        print(f"generate produced an invalid answer: {err}")

    single_ms = time_calls(lambda: policy.decision_table([obs]), iters)
    gen_ms = time_calls(generate, iters)
    s, g = percentiles(single_ms), percentiles(gen_ms)
    print(f"{'path':<14}{'p50 ms':>10}{'p99 ms':>10}")
    print(f"{'single pass':<14}{s['p50']:>10.2f}{s['p99']:>10.2f}")
    print(f"{'generate':<14}{g['p50']:>10.2f}{g['p99']:>10.2f}")
    record = {"bench": "decision", "single_pass_ms_p50": s["p50"], "single_pass_ms_p99": s["p99"],
              "generate_ms_p50": g["p50"], "generate_ms_p99": g["p99"], "speedup": g["p50"] / s["p50"],
              "threads": threads, "iters": iters}
    emit(record)
    return record
