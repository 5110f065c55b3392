"""A `.pt2` program exported at a fixed batch size (`torch.export.export(model, (x,))`, no
dynamic_shapes) runs on any batch: chunks of its own size, the last one padded."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from robustcli.models import ExportedModule, fixed_batch_size


def _net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, 3, 3), nn.ReLU(), nn.Flatten(), nn.Linear(3 * 6 * 6, 10)).eval()


@pytest.mark.parametrize("export_batch, n", [(1, 5), (3, 7), (3, 3), (3, 2), (4, 0)])
def test_fixed_batch_program_matches_the_module_on_any_batch(export_batch, n):
    model = _net()
    program = torch.export.export(model, (torch.rand(export_batch, 1, 8, 8),)).module()
    wrapped = ExportedModule(program)
    assert wrapped.fixed_batch == export_batch
    x = torch.rand(n, 1, 8, 8, requires_grad=True)
    out = wrapped(x)
    assert out.shape == (n, 10)
    torch.testing.assert_close(out, model(x))
    if n:  # attacks need the input gradient through the chunks
        (g,) = torch.autograd.grad(out.logsumexp(1).sum(), x)
        xr = x.detach().requires_grad_(True)
        (gr,) = torch.autograd.grad(model(xr).logsumexp(1).sum(), xr)
        torch.testing.assert_close(g, gr)


def test_dynamic_batch_program_is_called_whole():
    model = _net()
    batch = torch.export.Dim("batch", min=2)
    program = torch.export.export(model, (torch.rand(2, 1, 8, 8),), dynamic_shapes=({0: batch},)).module()
    assert fixed_batch_size(program) is None
    x = torch.rand(5, 1, 8, 8)
    torch.testing.assert_close(ExportedModule(program)(x), model(x))


def test_fixed_batch_program_is_attacked_at_the_cli(tmp_path, run_cli):
    from certify_nets import user_digits_cnn

    model = user_digits_cnn().eval()
    torch.export.save(torch.export.export(model, (torch.rand(1, 1, 8, 8),)), str(tmp_path / "m1.pt2"))
    r = run_cli("attack", "--model", tmp_path / "m1.pt2", "--data", "digits", "--n", "6", "--attack", "fgsm",
                "--eps", "0.1")
    assert r.exit_code == 0, r.output
    assert "fixed batch size of 1" in r.stderr
