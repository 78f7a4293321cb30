import pytest
import torch
from torch.distributions import Normal

import infcomp as ic


def test_a_plain_run_is_a_simulation():
    def model():
        z = ic.sample("z", Normal(0.0, 1.0))
        x = ic.observe("x", Normal(z, 0.1))
        fixed = ic.observe("y", Normal(z, 0.1), value=2.0)
        ic.factor("f", -1.0)
        return z, x, fixed

    z, x, fixed = model()
    assert z.shape == x.shape == ()
    assert fixed == 2.0 and fixed.dtype == torch.get_default_dtype()


def test_names_must_be_non_empty_strings():
    with pytest.raises(ic.ModelError, match="non-empty string"):
        ic.sample("", Normal(0.0, 1.0))
    with pytest.raises(ic.ModelError, match="non-empty string"):
        ic.observe(3, Normal(0.0, 1.0))  # type: ignore[arg-type]
    with pytest.raises(ic.ModelError, match="non-empty string"):
        ic.factor(None, 0.0)  # type: ignore[arg-type]


def test_a_site_needs_a_torch_distribution():
    with pytest.raises(ic.ModelError, match="sample site 'z'.*Distribution"):
        ic.sample("z", 3.0)  # type: ignore[arg-type]
    with pytest.raises(ic.ModelError, match="observe site 'x'.*Distribution"):
        ic.observe("x", None)  # type: ignore[arg-type]


def test_factor_records_its_log_weight():
    def model():
        ic.factor("f", torch.tensor([1.0, 2.0]))

    trace = ic.trace(model).get_trace()
    assert trace["f"].kind == "factor"
    assert torch.equal(trace["f"].value, torch.tensor([1.0, 2.0]))
