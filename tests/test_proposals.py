"""Proposals: one protocol for the prior, programs and networks, chosen once."""

import pytest
import torch
from torch import nn
from torch.distributions import Normal

import infcomp as ic
from infcomp.examples.csis_gaussian import Guide
from infcomp.examples.gaussian import DATA, gaussian
from infcomp.inference import (
    Job,
    NetworkProposal,
    PriorProposal,
    ProgramProposal,
    Request,
    as_proposal,
)
from infcomp.inference.particles import as_data


def plain_guide(prior_mean=1.0, observations=None):
    ic.sample("z", Normal(observations["x1"], 1.0))


def test_the_proposal_is_chosen_once_from_what_the_user_passed():
    assert isinstance(as_proposal(None), PriorProposal)
    assert isinstance(as_proposal(plain_guide), ProgramProposal)
    assert isinstance(as_proposal(Guide()), ProgramProposal)
    network = ic.CSIS(gaussian).network
    assert isinstance(as_proposal(network), NetworkProposal)
    proposal = NetworkProposal(network, 0.1)
    assert as_proposal(proposal) is proposal
    with pytest.raises(TypeError, match="callable"):
        as_proposal(3)
    with pytest.raises(ValueError, match="defensive"):
        NetworkProposal(network, 1.5)


@pytest.mark.parametrize("make", [lambda: PriorProposal(), lambda: ProgramProposal(plain_guide)])
def test_log_q_of_simulations_is_the_proposal_density(make):
    proposal = make()
    batch = ic.JointSimulator(gaussian)(50)
    trace = batch.traces[0]
    z, x1 = trace["z"].value, trace["x1"].value
    log_q = proposal.log_prob(batch, Job(gaussian, proposal))
    if isinstance(proposal, PriorProposal):
        expected = Normal(1.0, 5**0.5).log_prob(z)
    else:
        expected = Normal(x1, 1.0).log_prob(z)
    assert log_q.shape == (50,)
    assert torch.allclose(log_q, expected.double(), atol=1e-5)


def test_a_program_proposal_weighs_by_joint_over_proposal():
    proposal = ProgramProposal(plain_guide)
    run = proposal.run(Job(gaussian, proposal), Request(as_data(DATA)))
    z = run.model_trace["z"].value
    assert torch.equal(run.proposal_trace["z"].value, z)
    log_q = Normal(DATA["x1"], 1.0).log_prob(z)
    assert torch.isclose(run.proposal_trace.log_prob_sum(), log_q.double())


def test_a_guide_that_misses_a_site_is_named():
    def empty(observations=None):
        pass

    with pytest.raises(ic.GuideError, match="did not sample latent site 'z'"):
        ic.importance(gaussian, DATA, 10, guide=empty)


def test_a_network_proposal_is_trained_through_its_log_q():
    csis = ic.CSIS(gaussian, validation_size=0)
    batch = csis.simulator(64)
    log_q = csis.proposal.log_prob(batch, Job(gaussian, csis.proposal))
    assert log_q.shape == (64,) and log_q.requires_grad
    (-log_q.mean()).backward()
    grads = [p.grad for p in csis.network.parameters() if p.grad is not None]
    assert grads and any(bool(g.abs().sum() > 0) for g in grads)
    assert isinstance(csis.guide, nn.Module)
