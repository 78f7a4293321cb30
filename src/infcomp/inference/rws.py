"""Reweighted wake-sleep: learn the model's parameters θ and the proposal φ together.

Bornschein & Bengio (ICLR 2015); Le, Kosiorek, Siddharth, Teh & Wood, "Revisiting
reweighted wake-sleep" (UAI 2019). On a minibatch of observed data sets y_b, with K
particles x_kb ~ q_φ(x; y_b) and ``log w_kb = log p_θ(x_kb, y_b) - log q_φ(x_kb; y_b)``:

- wake-θ: maximise ``Σ_b log Ẑ_b`` with ``log Ẑ_b = logsumexp_k(log w_kb) - log K``, the
  importance-weighted bound on ``log p_θ(y_b)`` (q held fixed);
- wake-φ: minimise ``-Σ_b Σ_k w̄_kb log q_φ(x_kb; y_b)``, ``w̄`` the normalized weights
  (held fixed): fits q to the posterior on the real data;
- sleep-φ: minimise ``-1/n Σ_i log q_φ(x_i; y_i)`` on fantasies ``(x_i, y_i) ~ p_θ``:
  the compiled-inference loss, from the current model.

The φ loss is ``insomnia · wake-φ + (1 - insomnia) · sleep-φ``, as in Pyro. Because
particles are drawn without reparametrization, discrete latents are no obstacle.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from infcomp.inference.common import Program, check_positive_int, untouched_random_state
from infcomp.inference.csis import NETWORK_PROBE_SIZE, adopt_new_parameters, default_optimizer
from infcomp.inference.importance import importance_batch
from infcomp.inference.objectives import iwae_bound, model_log_weights, wake_phi_loss
from infcomp.inference.particles import Job, ParticleEngine, stack_datasets
from infcomp.inference.proposals import as_proposal
from infcomp.inference.simulation import JointSimulator
from infcomp.nn.network import InferenceNetwork, NetworkConfig


class RWS:
    """Reweighted wake-sleep for a model with parameters and many observed data sets.

    Args:
        model: the program; an ``nn.Module`` whose parameters are θ (a plain function
            has none: θ is fixed and only the proposal learns).
        data: the observed data sets: a list of observation dicts, or one dict whose
            values stack them along a leading dimension.
        guide: a function or ``nn.Module`` guide (as for :class:`~infcomp.CSIS`); None
            builds the automatic inference network from the model.
        num_particles: K, particles per data set.
        insomnia: the weight of wake-φ against sleep-φ in the proposal's loss
            (1: wake-φ only; 0: sleep-φ only, i.e. compiled inference).
        model_optimizer, guide_optimizer: ``torch.optim`` optimizers; by default Adam
            with ``model_learning_rate`` and ``learning_rate``.
        sleep_batch_size: fantasies per sleep step (default: the minibatch size).
        args, kwargs, vectorize: as for :func:`~infcomp.importance`.
        network, observation_embeddings: options of the automatic network.
        device: where the data (and the automatic network) go: the model's device.

    Example:
        >>> import torch
        >>> import infcomp as ic
        >>> from infcomp.examples.rws_mixture import Mixture, simulate_data
        >>> _ = torch.manual_seed(0)
        >>> data = {"y": simulate_data(200)}               # 200 data sets of one point
        >>> rws = ic.RWS(Mixture(), data, num_particles=10)
        >>> history = rws.train(20, batch_size=50, progress=False)
        >>> log_evidence, stderr = rws.log_evidence(num_particles=100)
        >>> len(history["iwae_bound"]), stderr < 1
        (20, True)
    """

    def __init__(
        self,
        model: Program,
        data: Mapping[str, Any] | Sequence[Mapping[str, Any]],
        guide: Program | None = None,
        *,
        num_particles: int = 10,
        insomnia: float = 1.0,
        model_optimizer: torch.optim.Optimizer | None = None,
        guide_optimizer: torch.optim.Optimizer | None = None,
        learning_rate: float = 1e-3,
        model_learning_rate: float = 1e-2,
        sleep_batch_size: int | None = None,
        args: tuple[Any, ...] = (),
        kwargs: Mapping[str, Any] | None = None,
        vectorize: bool | None = None,
        network: NetworkConfig | None = None,
        observation_embeddings: Mapping[str, nn.Module] | None = None,
        device: torch.device | str | None = None,
    ) -> None:
        if not 0 <= insomnia <= 1:
            raise ValueError(f"insomnia must lie in [0, 1], got {insomnia}")
        self.model = model
        self.data = stack_datasets(data, device)
        self.num_datasets = next(iter(self.data.values())).shape[0]
        self.num_particles = check_positive_int("num_particles", num_particles)
        self.insomnia = float(insomnia)
        self.sleep_batch_size = (
            None
            if sleep_batch_size is None
            else check_positive_int("sleep_batch_size", sleep_batch_size)
        )
        self.args = tuple(args)
        self.kwargs = dict(kwargs or {})
        self.vectorize = vectorize
        self.simulator = JointSimulator(model, self.args, self.kwargs, vectorize)
        if guide is None:
            with untouched_random_state():
                traces = self.simulator(NETWORK_PROBE_SIZE).traces
            guide = InferenceNetwork.from_traces(traces, network, observation_embeddings)
            guide.to(device=device)
        self.guide = guide
        self.proposal = as_proposal(guide, vectorize)
        # One engine for every wake step: the model is probed and its way of running
        # (vectorized or not) decided once, for minibatches of one data structure.
        self.engine = ParticleEngine(Job(model, self.proposal, self.args, self.kwargs), vectorize)
        model_parameters = list(model.parameters()) if isinstance(model, nn.Module) else []
        if model_optimizer is None and model_parameters:
            model_optimizer = default_optimizer(model_parameters, model_learning_rate)
        self.model_optimizer = model_optimizer
        if guide_optimizer is None:
            if not isinstance(guide, nn.Module) or not list(guide.parameters()):
                raise TypeError("pass a guide_optimizer over the guide's parameters")
            guide_optimizer = default_optimizer(list(guide.parameters()), learning_rate)
        self.guide_optimizer = guide_optimizer
        self.num_steps = 0
        self.history: dict[str, list[float]] = {"iwae_bound": [], "wake_phi": [], "sleep_phi": []}

    def step(self, batch_size: int | None = None) -> dict[str, float]:
        """One update of θ and φ on a random minibatch of ``batch_size`` data sets
        (default: all of them). Returns the minibatch's mean IWAE bound per data set
        and the wake-φ and sleep-φ losses (NaN for a phase that did not run)."""
        size = (
            self.num_datasets
            if batch_size is None
            else check_positive_int("batch_size", batch_size)
        )
        count = min(size, self.num_datasets)
        self._train_mode(True)
        losses: dict[str, Tensor] = {}
        if self.model_optimizer is not None or self.insomnia > 0:
            chosen = torch.randperm(self.num_datasets)[:count]
            minibatch = {name: value[chosen] for name, value in self.data.items()}
            run = self.engine.run(minibatch, self.num_particles, batched_data=True)
            assert run.log_proposal is not None
            bound = iwae_bound(model_log_weights(run.log_weights, run.log_proposal))
            losses["iwae_bound"] = bound.mean()
            losses["wake_phi"] = wake_phi_loss(run.log_weights, run.log_proposal).mean()
        if self.insomnia < 1:
            size = count if self.sleep_batch_size is None else self.sleep_batch_size
            batch = self.simulator(size)
            log_q = self.proposal.log_prob(batch, self.engine.job)
            losses["sleep_phi"] = -log_q.sum() / batch.size
        total = torch.zeros((), dtype=torch.float64)
        if self.model_optimizer is not None:
            total = total - losses["iwae_bound"]
        if "wake_phi" in losses and self.insomnia > 0:
            total = total + self.insomnia * losses["wake_phi"]
        if "sleep_phi" in losses:
            total = total + (1 - self.insomnia) * losses["sleep_phi"]
        for optimizer in (self.model_optimizer, self.guide_optimizer):
            if optimizer is not None:
                optimizer.zero_grad()
        if total.requires_grad:
            total.backward()
        adopt_new_parameters(self.guide, self.guide_optimizer)
        for optimizer in (self.model_optimizer, self.guide_optimizer):
            if optimizer is not None:
                optimizer.step()
        self.num_steps += 1
        result = {
            name: float(losses[name].detach()) if name in losses else math.nan
            for name in self.history
        }
        for name, value in result.items():
            self.history[name].append(value)
        return result

    def train(
        self, num_steps: int, batch_size: int | None = None, *, progress: bool = True
    ) -> dict[str, list[float]]:
        """Run ``num_steps`` steps with a progress bar (``progress=False`` hides it);
        returns :attr:`history`, the per-step values of :meth:`step`."""
        num_steps = check_positive_int("num_steps", num_steps)
        bar = tqdm(range(num_steps), desc="wake-sleep", disable=not progress, leave=False)
        for _ in bar:
            values = self.step(batch_size)
            bar.set_postfix(
                {k: f"{v:.4f}" for k, v in values.items() if not math.isnan(v)}, refresh=False
            )
        bar.close()
        return self.history

    def log_evidence(
        self,
        data: Mapping[str, Any] | Sequence[Mapping[str, Any]] | None = None,
        num_particles: int = 1000,
    ) -> tuple[float, float]:
        """An estimate of ``log p_θ(data) = Σ_b log p_θ(y_b)`` with its standard error:
        ``Σ_b log Ẑ_b`` from importance sampling with the current proposal, K particles
        per data set (biased low by Jensen's inequality, less as K grows)."""
        self._train_mode(False)
        batch = importance_batch(
            self.model,
            self.data if data is None else data,
            num_particles,
            guide=self.proposal,
            args=self.args,
            kwargs=self.kwargs,
            vectorize=self.vectorize,
        )
        stderr = float(batch.log_evidence_stderr.pow(2).sum().sqrt())
        return float(batch.log_evidence.sum()), stderr

    def _train_mode(self, training: bool) -> None:
        for module in (self.model, self.guide):
            if isinstance(module, nn.Module) and module.training != training:
                module.train(training)
