"""Small trainers for the SIGKILL resume test, run alike in a child process and in the test."""

from __future__ import annotations

import torch

from robustcli.core.checkpoint import Checkpointer
from robustcli.data import load_dataset

EPOCHS = 3
N = 160
BATCHES = {"pgd-at": 5, "ibp-short": 5}  # batches per epoch: 160 points in batches of 32


def run(trainer: str, out: str, *, resume: bool, on_batch=None, seed: int = 0) -> dict[str, torch.Tensor]:
    d = load_dataset("digits", "train").head(N)
    ckpt = Checkpointer(out)
    if trainer == "pgd-at":
        from robustcli.archs import build_arch
        from robustcli.core.nn import Normalized
        from robustcli.defenses.adversarial import AdversarialConfig, train_adversarial
        from robustcli.zoo import NORMALIZATION

        torch.manual_seed(7 if resume else 0)  # a resumed run takes everything from the checkpoint
        model = Normalized(build_arch("digits-mlp"), *NORMALIZATION["digits"])
        cfg = AdversarialConfig(defense="pgd-at", eps=0.1, epochs=EPOCHS, batch_size=32, attack_steps=2,
                                warmup_epochs=1, seed=seed)  # fmt: skip
        train_adversarial(model, d.x, d.y, cfg, checkpointer=ckpt, resume=resume, on_batch=on_batch)
    else:
        from robustcli.certify.training import recipe_config, train_ibp
        from robustcli.commands.train_ibp import build_model

        model = build_model("digits-mlp-bn", "digits", (), (), "ibp", seed=5 if resume else 0)
        cfg = recipe_config("short", 0.1, EPOCHS, warmup=1, lr_milestones=(2,), batch_size=32, seed=seed)
        train_ibp(model, d.x, d.y, cfg, checkpointer=ckpt, resume=resume, on_batch=on_batch)
    return {k: v.detach().clone() for k, v in model.state_dict().items()}
