"""Run by test_training under torchrun: a few SFT steps as one rank of a data-parallel group; writes the
sha256 of all its weights to OUT/rank<k>.json."""
import hashlib
import json
import sys
from pathlib import Path

from vla_driver.model.checkpoint import load_checkpoint
from vla_driver.rl.parallel import DataParallel
from vla_driver.rl.sft import SFTConfig, SFTTrainer, load_training_data

checkpoint, data, out = sys.argv[1:4]
parallel = DataParallel.from_environment(cpu=True)
model = load_checkpoint(checkpoint)
cfg = SFTConfig(action_steps=3, decision_steps=3, batch_size=4, threads=1)
SFTTrainer(model, load_training_data(data), cfg, parallel).train(progress=False)
digest = hashlib.sha256(b"".join(p.detach().numpy().tobytes() for p in model.parameters())).hexdigest()
Path(out, f"rank{parallel.rank}.json").write_text(json.dumps({"digest": digest, "processes": parallel.num_processes}))
