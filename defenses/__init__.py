"""Defenses: adversarial training, defensive distillation, conservative filter thresholds, AdvMoE.

Plain PyTorch engines; the commands in `robustcli.commands` parse options and report.
"""
