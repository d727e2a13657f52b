"""Imitation (SFT): the action adapter learns trajectories and the decision adapter learns decisions.

Phase 1 trains the vision encoder, the ego projection and the trajectory head with BOTH adapters: every
step adds the decision loss (decision adapter) to the trajectory loss (action adapter). The encoder is
trained from scratch here, so without the decision loss it learns only what trajectories need: given
the decision words in its prompt the action expert barely has to look at the car ahead, and a decision
expert reading those features kept KEEP at 0.95 with 2 m to a slower leader. ``decision_weight=0`` gives
MindDrive's recipe instead (action adapter only, then copied into the decision adapter). Phase 2 polishes
the decision adapter alone on the frozen features."""
from __future__ import annotations

import dataclasses
import json
import logging
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from torch.nn import functional as F
from tqdm import tqdm

from ..core.camera_rig import CameraRig, rig_label
from ..core.types import Observation
from ..core.vocabulary import Decision
from ..model.build import build_model, copy_adapter
from ..model.checkpoint import load_checkpoint, save_checkpoint, sha256_file
from ..model.config import VLAConfig
from ..model.inputs import InputEncoder
from ..sim.shards import load_dataset
from .curves import save_curves
from .parallel import DataParallel

log = logging.getLogger(__name__)


@dataclass
class SFTConfig:
    """Defaults train the embedded tiny checkpoint in a few minutes on 2 CPU cores."""

    action_steps: int = 1500  # phase 1 optimizer steps (vision, ego projection, head, action + decision LoRA)
    decision_steps: int = 1000  # phase 2 optimizer steps (decision LoRA only, features frozen)
    decision_weight: float = 1.0  # weight of the decision loss in phase 1 (0: trajectories only, MindDrive)
    batch_size: int = 32
    lr_modules: float = 1e-3  # vision encoder, ego projection, trajectory head
    lr_lora: float = 1e-3
    # A from-scratch base has no pretraining: phase 1 may train it too (never for fine-tunes or a pretrained
    # LLM). Off by default: lower imitation losses, but a closed-loop run with it drove worse (docs/design.md).
    train_base: bool = False
    lr_base: float = 5e-4
    weight_decay: float = 0.01
    all_modes_weight: float = 0.1  # weak supervision of the non-selected speed modes toward the truth
    label_smoothing: float = 0.05
    # MindDrive: copy the IL action adapter into the decision adapter (only when phase 1 left it untrained)
    init_decision_from_action: bool = True
    # a fine-tune on data with more frames per camera than the checkpoint sees: grow its views to the data's
    widen_history: bool = False
    # recompute each decoder layer's activations in the backward pass instead of keeping them: less memory for
    # a large base (docs/scale.md measures it at 0.5 B), ~30 % more compute
    gradient_checkpointing: bool = False
    seed: int = 0
    threads: int = 2


def observations_from(data: dict, idx: np.ndarray) -> list[Observation]:
    return [Observation(image=data["image"][i], speed=float(data["ego"][i, 0]), navigation=str(data["navigation"][i]),
                        accel=float(data["ego"][i, 1]), yaw_rate=float(data["ego"][i, 2])) for i in idx]


def decisions_from(data: dict, idx: np.ndarray) -> list[Decision]:
    return [Decision(str(data["speed"][i]), str(data["path"][i])) for i in idx]


class SFTTrainer:
    """``parallel`` spreads the batches over the processes of ``accelerate launch`` (rl/parallel.py)."""

    def __init__(self, model, data: dict, cfg: SFTConfig | None = None, parallel: DataParallel | None = None):
        self.model, self.data, self.cfg = model, data, cfg or SFTConfig()
        self.parallel = parallel or DataParallel()
        self.device = self.parallel.device
        self.enc = InputEncoder(model.tokenizer, model.cfg)
        self.rng = np.random.default_rng(self.parallel.batch_seed(self.cfg.seed))
        self.history: dict[str, list[float]] = {"action_loss": [], "decision_loss": [], "decision_acc": []}
        vocab = model.vocab
        self.speed_idx = np.array([vocab.speed_index(s) for s in data["speed"]])
        self.path_idx = np.array([vocab.path_index(p) for p in data["path"]])
        self.future = torch.from_numpy(np.asarray(data["future"], dtype=np.float32))

    def batches(self, steps: int):
        n = len(self.speed_idx)
        for _ in range(steps):
            yield self.rng.choice(n, size=min(self.cfg.batch_size, n), replace=False)

    def _optimizer(self, adapters: tuple[str, ...], with_modules: bool, with_base: bool = False):
        """AdamW over the LoRA weights of ``adapters`` (+ the base, + the vision/ego/head modules). Each
        objective activates its adapter before its forward pass (see ``_activate``)."""
        lora = [p for n, p in self.model.llm.named_parameters()
                if "lora_" in n and any(f".{a}." in n for a in adapters)]
        groups = [{"params": lora, "lr": self.cfg.lr_lora}]
        base = [p for n, p in self.model.llm.named_parameters() if "lora_" not in n]
        for p in base:
            p.requires_grad_(with_base)
        if with_base:
            groups.append({"params": base, "lr": self.cfg.lr_base})
        modules = [p for m in (self.model.vision, self.model.ego_proj, self.model.traj_head) for p in m.parameters()]
        if hasattr(self.model, "view_embed"):  # which camera and which frame each view is
            modules.append(self.model.view_embed)
        for p in modules:
            p.requires_grad_(with_modules)
        if with_modules:
            groups.append({"params": modules, "lr": self.cfg.lr_modules})
        return torch.optim.AdamW(groups, weight_decay=self.cfg.weight_decay)

    def action_loss(self, idx: np.ndarray) -> torch.Tensor:
        obs = observations_from(self.data, idx)
        rows = self.enc.action_rows(obs, decisions_from(self.data, idx))
        modes = self.model.trajectories(*self.enc.batch(obs, rows, self.device))  # (B, S, N, 3)
        truth = self.future[idx].to(self.device)
        picked = modes[torch.arange(len(idx)), torch.from_numpy(self.speed_idx[idx])]  # (B, N, 3)
        # L1 keeps a strong gradient on sub-metre lateral errors (lane keeping); heading in rad is small.
        weights = torch.tensor([1.0, 2.0, 4.0], device=self.device)
        loss = (F.l1_loss(picked, truth, reduction="none") * weights).mean()
        others = (F.l1_loss(modes, truth[:, None].expand_as(modes), reduction="none") * weights).mean()
        return loss + self.cfg.all_modes_weight * others

    def _decision_objective(self, idx: np.ndarray) -> tuple[torch.Tensor, dict]:
        loss, acc = self.decision_loss(idx)
        return loss, {"decision_acc": acc}

    def decision_loss(self, idx: np.ndarray) -> tuple[torch.Tensor, float]:
        obs = observations_from(self.data, idx)
        table = self.model.decision_log_probs(*self.enc.batch(obs, self.enc.decision_rows(obs), self.device))
        flat = table.flatten(1)
        target = torch.from_numpy(self.speed_idx[idx] * table.shape[2] + self.path_idx[idx]).to(self.device)
        eps = self.cfg.label_smoothing
        loss = -(1 - eps) * flat.gather(1, target[:, None]).mean() - eps * flat.mean()
        acc = float((flat.argmax(1) == target).float().mean())
        return loss, acc

    def _activate(self, adapter: str) -> None:
        """Select ``adapter`` with exactly its LoRA weights trainable (peft's own switch skips the already
        active adapter, so it would not undo a freeze)."""
        self.model.select_adapter(adapter)
        for n, p in self.model.llm.named_parameters():
            if "lora_" in n:
                p.requires_grad_(f".{adapter}." in n)

    def _phase(self, name: str, steps: int, opt, objectives: list, progress: bool) -> None:
        """``steps`` optimizer steps with a one-cycle schedule. ``objectives``: (adapter, weight, loss_fn) with
        ``loss_fn(idx) -> (loss, {metric: value})``; each runs with its adapter active and is backpropagated
        before the next one switches adapters (the switch freezes the other adapter's LoRA weights)."""
        if steps >= 20:
            sched = torch.optim.lr_scheduler.OneCycleLR(opt, [g["lr"] for g in opt.param_groups], total_steps=steps,
                                                        pct_start=0.1)
        else:  # a one-cycle warm-up shorter than 2 steps divides by zero inside torch: a constant rate instead
            sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda _: 1.0)
        bar = tqdm(self.batches(steps), total=steps, desc=f"SFT {name}",
                   disable=not (progress and self.parallel.is_main))
        params = [p for g in opt.param_groups for p in g["params"]]
        for idx in bar:
            opt.zero_grad()
            metrics = {}
            for adapter, weight, loss_fn in objectives:
                self._activate(adapter)
                loss, extra = loss_fn(idx)
                (weight * loss).backward()
                metrics.update({f"{adapter}_loss": loss.item(), **extra})
            self.parallel.average_gradients(params)
            opt.step()
            sched.step()
            for key, value in metrics.items():
                self.history[key].append(value)
            bar.set_postfix({k: f"{v:.3f}" for k, v in metrics.items()})

    def train(self, progress: bool = True) -> dict:
        torch.manual_seed(self.cfg.seed)
        torch.set_num_threads(self.cfg.threads)
        self.model.to(self.device).train()
        base = self.model.llm.get_base_model()
        if self.cfg.gradient_checkpointing:  # non-reentrant: gradients reach the LoRA weights of a frozen base
            base.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        start = time.time()
        action = ("action", 1.0, lambda idx: (self.action_loss(idx), {}))
        decision = ("decision", 1.0, self._decision_objective)
        joint = self.cfg.decision_weight > 0
        phase1 = [action, ("decision", self.cfg.decision_weight, self._decision_objective)] if joint else [action]
        opt = self._optimizer(("action", "decision") if joint else ("action",), with_modules=True,
                              with_base=self.cfg.train_base)
        self._phase("action", self.cfg.action_steps, opt, phase1, progress)
        if self.cfg.init_decision_from_action and not joint:
            copy_adapter(self.model.llm, "action", "decision")
        opt = self._optimizer(("decision",), with_modules=False)
        self._phase("decision", self.cfg.decision_steps, opt, [decision], progress)
        for p in self.model.parameters():
            p.requires_grad_(False)
        if self.cfg.gradient_checkpointing:
            base.gradient_checkpointing_disable()
        self.model.to("cpu").eval()
        return {
            "seconds": time.time() - start,
            "final_action_loss": float(np.mean(self.history["action_loss"][-50:] or [np.nan])),
            "final_decision_loss": float(np.mean(self.history["decision_loss"][-50:] or [np.nan])),
            "final_decision_acc": float(np.mean(self.history["decision_acc"][-50:] or [np.nan])),
            "processes": self.parallel.num_processes,
        }





TRAINING_KEYS = ("image", "ego", "navigation", "speed", "path", "future")


def load_training_data(data_dirs) -> dict:
    """One or several datasets (expert and DAgger recordings) concatenated on the keys SFT uses, plus
    ``rig``: the cameras they were recorded with (None: the top-down view) and ``history``, the frames per
    camera of each sample; all must share them."""
    dirs = [data_dirs] if isinstance(data_dirs, (str, Path)) else list(data_dirs)
    parts = [load_dataset(d) for d in dirs]
    rigs = {json.dumps(p["meta"].get("rig"), sort_keys=True) for p in parts}
    if len(rigs) > 1:
        raise ValueError(f"the datasets were recorded with different cameras: {sorted(rigs)}")
    histories = {p["meta"].get("history", 1) for p in parts}
    if len(histories) > 1:
        raise ValueError(f"the datasets were recorded with different frame histories: {sorted(histories)}")
    data = {k: np.concatenate([p[k] for p in parts]) for k in TRAINING_KEYS}
    data["rig"], data["history"] = parts[0]["meta"].get("rig"), histories.pop()
    return data


def train_sft(data_dir, out_dir: str | Path, base_checkpoint: str | None = None,
              cfg: SFTConfig | None = None, model_cfg=None, progress: bool = True,
              parallel: DataParallel | None = None) -> dict:
    """Dataset dir(s) -> trained checkpoint (+ loss curves PNG, + training report in the manifest).
    Under ``accelerate launch`` every process trains on its own batches; the main one saves."""
    cfg = cfg or SFTConfig()
    data = load_training_data(data_dir)
    dirs = [data_dir] if isinstance(data_dir, (str, Path)) else list(data_dir)
    if model_cfg is None and data["rig"] is not None:  # a new model for the cameras the data was recorded with
        model_cfg = VLAConfig.for_rig(CameraRig.from_dict(data["rig"]), history=data["history"])
    model = load_checkpoint(base_checkpoint) if base_checkpoint else build_model(model_cfg, seed=cfg.seed)
    if model.cfg.rig != data["rig"]:
        raise ValueError(f"the model drives from {rig_label(model.cfg.rig)}, the data was recorded with "
                         f"{rig_label(data['rig'])}")
    if base_checkpoint and cfg.widen_history and model.cfg.rig is not None and model.cfg.history < data["history"]:
        model.widen_history(data["history"])
    if model.cfg.history != data["history"]:
        raise ValueError(f"the model sees {model.cfg.history} frame(s) per camera, the data holds "
                         f"{data['history']} (fine-tune with --widen-history to give it more)")
    if base_checkpoint:  # fine-tuning: keep the decision adapter (and the base it was trained on)
        cfg = dataclasses.replace(cfg, init_decision_from_action=False, train_base=False)
    elif model.cfg.llm_pretrained_dir:  # a pretrained LLM stays frozen; only the adapters learn
        cfg = dataclasses.replace(cfg, train_base=False)
    parallel = parallel or DataParallel()
    trainer = SFTTrainer(model, data, cfg, parallel)
    report = trainer.train(progress)
    if not parallel.is_main:
        return report
    data_hashes = {f"{Path(d).name}/{p.name}": sha256_file(p) for d in dirs for p in sorted(Path(d).glob("*.npz"))}
    lineage = {"kind": "sft", "parent": getattr(model, "model_version", None), "data": data_hashes,
               "sft_config": asdict(cfg), "samples": int(len(data["speed"]))}
    save_checkpoint(model, out_dir, lineage=lineage, metrics={"sft": report})
    save_curves(trainer.history, Path(out_dir).with_suffix(".loss.png"))
    log.info("SFT report %s", json.dumps(report))
    return report
