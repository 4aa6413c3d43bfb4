import math

import pytest
import torch

from dipclip.density import density_report, information_density
from dipclip.errors import DipclipError


def test_id_of_known_spectra():
    m = torch.diag(torch.tensor([3.0, 1.0]))
    assert float(information_density(m, 1)) == pytest.approx(0.75)
    assert float(information_density(m, 2)) == pytest.approx(1.0)
    assert float(information_density(m, 1, energy=True)) == pytest.approx(0.9)
    assert float(information_density(torch.eye(4), 1)) == pytest.approx(0.25)
    rank_one = torch.outer(torch.arange(1.0, 5.0), torch.arange(1.0, 9.0))
    assert float(information_density(rank_one, 1)) == pytest.approx(1.0, abs=1e-6)


def test_id_of_a_stack_is_the_id_of_the_stacked_rows():
    stack = torch.randn(3, 4, 16)
    assert float(information_density(stack)) == pytest.approx(float(information_density(stack.reshape(12, 16))))


def test_id_is_differentiable_and_undefined_for_zero():
    m = torch.randn(4, 8, requires_grad=True)
    information_density(m, 1).backward()
    assert m.grad is not None and torch.isfinite(m.grad).all()
    assert math.isnan(float(information_density(torch.zeros(4, 8))))
    report = density_report(torch.ones(4, 8), torch.ones(4, 8))
    assert report["id_update"] is None and report["id_prompt"] == pytest.approx(1.0)


def test_id_rejects_bad_k():
    with pytest.raises(DipclipError, match="1 <= k <= min"):
        information_density(torch.randn(4, 8), 5)
