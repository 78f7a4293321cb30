"""Compiled sequential importance sampling (CSIS): inference compilation with a guide.

Compilation fits the guide q_φ(x; y) to the model by minimising

    L(φ) = E_p(x,y)[-log q_φ(x; y)] = E_p(y)[KL(p(x | y) ‖ q_φ(x; y))] + const,

estimated on batches of joint simulations (x_i, y_i) ~ p(x, y) (the model's observe
statements sample): L̂ = -1/B Σ_i log q_φ(x_i; y_i). The model is never
differentiated; only the guide's parameters get gradients. Afterwards, every data set
gets importance sampling with the guide as proposal (Le, Baydin & Wood, AISTATS 2017).
"""

from __future__ import annotations

import copy
import math
import numbers
import time
from collections.abc import Callable, Mapping
from typing import Any, Protocol

import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from infcomp._deprecation import renamed_argument, warn_renamed
from infcomp.errors import ArtifactError, ArtifactWarning, ModelError, SimulationWarning
from infcomp.inference.artifacts import (
    FORMAT,
    FORMAT_VERSION,
    Location,
    batch_signature,
    build_network,
    check_finite_state,
    check_signature,
    describe,
    load_guide_state,
    load_optimizer_state,
    probe_signature,
    read_artifact,
    signature_differences,
    write_artifact,
)
from infcomp.inference.common import (
    Program,
    check_positive_int,
    plain_value,
    program_name,
    untouched_random_state,
    warn_user,
)
from infcomp.inference.dataset import (
    TraceDataset,
    add_counts,
    check_invalid_fraction,
    clean_batch,
    default_batch_size,
)
from infcomp.inference.importance import Options, importance, importance_batch
from infcomp.inference.parallel import SimulationPool, simulate_chunks
from infcomp.inference.particles import Job, JointBatch, OnError
from infcomp.inference.proposals import NetworkProposal, as_proposal
from infcomp.inference.simulation import JointSimulator
from infcomp.nn.network import InferenceNetwork, NetworkConfig
from infcomp.posterior import BatchPosterior, Posterior

#: Joint simulations run to build an automatic network's modules.
NETWORK_PROBE_SIZE = 64

SchedulerFactory = Callable[[torch.optim.Optimizer], Any]
#: The containers of model arguments that an artifact keeps (see :func:`plain_value`).
SAVED = (tuple, list, dict)


class ParameterAverage:
    """An exponential moving average of a module's floating-point state, for training
    on a budget (:meth:`CSIS.train`): ``update`` after each step sets
    ``avg ← decay·avg + (1 - decay)·value`` for every entry; entries first seen later
    (modules of sites that appear later) start at their value.
    """

    def __init__(self, state: Mapping[str, Tensor], decay: float) -> None:
        self.decay = decay
        self.state: dict[str, Tensor] = {}
        self.update(state)

    def update(self, state: Mapping[str, Tensor]) -> None:
        with torch.no_grad():
            for name, value in state.items():
                if name not in self.state or not value.is_floating_point():
                    self.state[name] = value.detach().clone()
                else:
                    self.state[name].lerp_(value, 1 - self.decay)


class GradientReducer(Protocol):
    """What data-parallel training plugs into a training step
    (:class:`~infcomp.inference.distributed.DataParallel`)."""

    def prepare(self, batch: JointBatch) -> None:
        """Before the loss: make the guide's modules agree across processes."""

    def reduce(self, parameters: list[nn.Parameter], loss: float, size: int) -> float:
        """After the backward pass: set the gradients to those of the global batch and
        return its loss (with no parameters: the mean of the ranks' ``loss``, weighted
        by their ``size``)."""

    def stepped(self) -> None:
        """After the optimizer's step."""


class CSIS:
    """Inference compilation of ``model``: with the automatic inference network built
    from the model (no guide), or with a user-written ``guide``.

    A guide is a function or ``nn.Module`` called as
    ``guide(*args, observations=y, **kwargs)`` that samples every latent site of the
    model from distributions that depend on ``y``. A guide that broadcasts over a
    leading batch dimension of the observations gets a whole batch of simulations in
    one call (one vectorized pass and one backward per step); a guide written for one
    trace at a time is detected and called trace by trace.

    Pyro's calling conventions work too: ``CSIS(model, guide, optimizer,
    num_inference_samples=..., training_batch_size=..., validation_batch_size=...)``,
    model arguments at ``step(*args)`` and ``run(*args, observations=data)``.

    Args:
        model: the program to compile.
        guide: the proposal to train; None builds an
            :class:`~infcomp.nn.InferenceNetwork` by simulating the model.
        optimizer: a ``torch.optim`` optimizer over the guide's parameters; by default
            ``Adam(guide.parameters(), lr=learning_rate)`` (the guide must then be an
            ``nn.Module``).
        args, kwargs: the model's (and the guide's) arguments.
        learning_rate: for the default optimizer.
        scheduler: a function that takes the optimizer and returns a learning-rate
            scheduler (``torch.optim.lr_scheduler``), stepped after every training step.
        validation_size: the size of a fixed batch of simulations whose loss is
            reported during training (0: none; Pyro: ``validation_batch_size``).
        training_batch_size: simulations per :meth:`step` when none is given (256).
        num_inference_samples: particles per :meth:`run` when none is given (1000).
        vectorize: ``True``/``False`` forces batched / trace-by-trace simulation and
            guide calls; ``None`` chooses, with a one-time notice when it falls back.
        network: sizes and options of the automatic network
            (:class:`~infcomp.nn.NetworkConfig`).
        observation_embeddings: a module per observe site for the automatic network
            (e.g. :class:`~infcomp.nn.ConvEmbedding` for images).
        prior_inflation: train on simulations whose latent draws are widened by this
            factor (see :class:`~infcomp.inference.particles.inflate`).
        device, dtype: where the automatic network lives and its precision (the model's
            tensors must be on that device too); inference moves the data there.
        clip_grad_norm: the gradients' total norm is clipped to this before each step
            (``torch.nn.utils.clip_grad_norm_``; sbi's default, 5); None: no clipping.
        on_error: what a simulation that raises in the model does: ``"raise"`` (the
            error, as the user's, naming the last site reached) or ``"skip"`` (dropped,
            counted in :attr:`failed_simulations` by that site, one
            :class:`~infcomp.errors.SimulationWarning`).

    Simulations with NaN or infinite values (a failing simulator) are dropped from
    training and counted in :attr:`invalid_simulations` by the site where they first
    went wrong, with one :class:`SimulationWarning`; when more than half of a batch is
    invalid (or failed, with ``on_error="skip"``), training stops with a
    :class:`~infcomp.errors.ModelError`. A step whose
    loss or gradients are not finite is never applied (counted in
    :attr:`skipped_steps`).

    Example:
        >>> import torch
        >>> import infcomp as ic
        >>> from infcomp.examples.gaussian import gaussian
        >>> _ = torch.manual_seed(0)
        >>> csis = ic.CSIS(gaussian)                    # the automatic network
        >>> losses = csis.train(num_steps=300, batch_size=256, progress=False)
        >>> post = csis.run({"x1": 8.0, "x2": 9.0}, num_particles=1000)
        >>> bool(post.ess > 500)                        # of 1000 particles
        True
    """

    def __init__(
        self,
        model: Program,
        guide: Program | None = None,
        optimizer: torch.optim.Optimizer | None = None,
        *,
        args: tuple[Any, ...] = (),
        kwargs: Mapping[str, Any] | None = None,
        learning_rate: float = 1e-3,
        scheduler: SchedulerFactory | None = None,
        validation_size: int | None = None,
        training_batch_size: int = 256,
        num_inference_samples: int = 1000,
        vectorize: bool | None = None,
        network: NetworkConfig | None = None,
        observation_embeddings: Mapping[str, nn.Module] | None = None,
        prior_inflation: float = 1.0,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
        validation_batch_size: int | None = None,
        clip_grad_norm: float | None = 5.0,
        on_error: OnError = "raise",
    ) -> None:
        if not callable(model):
            raise TypeError("CSIS needs a callable model")
        if guide is not None and not callable(guide):
            raise TypeError("the guide must be callable (a function or an nn.Module)")
        if guide is not None and (network is not None or observation_embeddings is not None):
            raise ValueError("network options apply to the automatic network, not to a guide")
        if validation_size is not None and validation_batch_size is not None:
            raise TypeError("give validation_size or Pyro's validation_batch_size, not both")
        validation = validation_size if validation_batch_size is None else validation_batch_size
        self.model = model
        self.args = tuple(args)
        self.kwargs = dict(kwargs or {})
        self.device = device
        self.training_batch_size = check_positive_int("training_batch_size", training_batch_size)
        self.num_inference_samples = check_positive_int(
            "num_inference_samples", num_inference_samples
        )
        self.simulator = JointSimulator(
            model,
            self.args,
            self.kwargs,
            vectorize,
            prior_inflation=prior_inflation,
            on_error=on_error,
        )
        if guide is None:
            # Simulate the model once to find its observe sites and latent families.
            with untouched_random_state():
                traces = self.simulator(NETWORK_PROBE_SIZE).traces
            if not any(trace.names("observe") for trace in traces):
                raise ModelError(
                    f"model {program_name(model)} has no observe site: a compiled proposal "
                    f"is q(x; y), conditioned on observations; mark the data with "
                    f"ic.observe(name, dist)"
                )
            guide = InferenceNetwork.from_traces(traces, network, observation_embeddings)
            guide.to(device=device, dtype=dtype)
        if optimizer is None:
            if not isinstance(guide, nn.Module):
                raise TypeError(
                    f"guide {program_name(guide)} is not an nn.Module: pass an optimizer over "
                    f"its parameters"
                )
            parameters = list(guide.parameters())
            if not parameters:
                raise ValueError(f"guide {program_name(guide)} has no parameters to train")
            optimizer = default_optimizer(parameters, learning_rate)
        if not isinstance(optimizer, torch.optim.Optimizer):
            raise TypeError(
                f"optimizer must be a torch.optim.Optimizer, got {type(optimizer).__name__}"
            )
        self.guide = guide
        self.proposal = as_proposal(guide, vectorize)
        self.optimizer = optimizer
        self.scheduler = scheduler(optimizer) if scheduler is not None else None
        self.validation_size = check_positive_int(
            "validation_size", 256 if validation is None else validation, minimum=0
        )
        if clip_grad_norm is not None and not clip_grad_norm > 0:
            raise ValueError(f"clip_grad_norm must be positive or None, got {clip_grad_norm}")
        self.clip_grad_norm = clip_grad_norm
        self.num_steps = 0
        self.loss_history: list[float] = []
        self.validation_history: list[tuple[int, float]] = []
        #: Joint simulations this CSIS ran (online steps and :meth:`simulate`).
        self.num_simulations = 0
        #: The simulations, kept and dropped, of the dataset its last training on a
        #: budget used (``train(num_simulations=N)``: N; ``train(dataset=...)``: the
        #: dataset's, wherever it was simulated); 0 before any.
        self.dataset_simulations = 0
        #: Simulations dropped for NaN or infinite values, by the first such site.
        self.invalid_simulations: dict[str, int] = {}
        #: Simulations that raised in the model and were skipped, by the last site reached.
        self.failed_simulations: dict[str, int] = {}
        #: Training steps not applied because the loss or gradients were not finite.
        self.skipped_steps = 0
        #: Wall-clock seconds spent in :meth:`train` (simulating and fitting), summed.
        self.training_seconds = 0.0
        #: Plain facts to keep with a saved artifact (strings, numbers, lists and dicts of
        #: them), e.g. the command line's ``module:function`` of the model.
        self.metadata: dict[str, Any] = {}
        self._warned: set[str] = set()
        self._validation_batch: JointBatch | None = None
        self._simulation_pool: SimulationPool | None = None
        #: Set by :class:`~infcomp.inference.distributed.DataParallel` while it trains.
        self.data_parallel: GradientReducer | None = None
        # The online validation batch is drawn from its own seed, so that validating (or
        # not) leaves the training stream, and a resumed run, unchanged.
        with untouched_random_state():
            self._validation_seed = int(torch.randint(2**62, ()))

    @property
    def network(self) -> InferenceNetwork | None:
        """The automatic inference network, when CSIS was built without a guide."""
        return self.guide if isinstance(self.guide, InferenceNetwork) else None

    # -- the objective -----------------------------------------------------------------

    def loss(
        self,
        batch: JointBatch,
        args: tuple[Any, ...] | None = None,
        kwargs: Mapping[str, Any] | None = None,
    ) -> Tensor:
        """``-1/B Σ_i log q(x_i; y_i)`` over a batch of joint simulations (the guide
        called with the model's arguments, by default the constructor's)."""
        job = Job(
            self.model,
            self.proposal,
            self.args if args is None else tuple(args),
            self.kwargs if kwargs is None else kwargs,
        )
        log_q = self.proposal.log_prob(batch, job)
        return -log_q.sum() / batch.size

    # -- training ----------------------------------------------------------------------

    def step(self, *args: Any, batch_size: int | None = None, **kwargs: Any) -> float:
        """One gradient step on ``batch_size`` fresh joint simulations (default
        :attr:`training_batch_size`); returns the loss.

        Positional and other keyword arguments go to the model and the guide, as in
        Pyro (``csis.step(prior_mean)``); without them, the constructor's are used. A
        single positional ``int`` is still read as the batch size, the deprecated
        calling convention (pass ``batch_size=`` by keyword).
        """
        if len(args) == 1 and type(args[0]) is int and batch_size is None:
            warn_renamed("step(batch_size) with the batch size positional", "step(batch_size=...)")
            batch_size, args = args[0], ()
        size = check_positive_int(
            "batch_size", self.training_batch_size if batch_size is None else batch_size
        )
        model_args = tuple(args) if args else self.args
        model_kwargs = kwargs if kwargs else self.kwargs
        batch = self._simulate_valid(size, model_args, model_kwargs)
        return self._gradient_step(batch, model_args, model_kwargs)

    def _gradient_step(
        self, batch: JointBatch, args: tuple[Any, ...], kwargs: Mapping[str, Any]
    ) -> float:
        """One optimizer step on the loss of ``batch``, unless the loss or the gradients
        are not finite (then the parameters stay as they are); returns the loss."""
        self._train_mode(True)
        self.optimizer.zero_grad()
        if self.data_parallel is not None:
            # Every process makes the modules of every process's new sites, alike.
            self.data_parallel.prepare(batch)
        value = 0.0  # a process's share of a global batch may be empty
        if batch.size:
            loss = self.loss(batch, args, kwargs)
            # With every latent site proposed from its prior, log q does not depend on the
            # parameters: there is nothing to learn from this batch.
            if loss.requires_grad:
                loss.backward()
            value = float(loss.detach())
        adopt_new_parameters(self.guide, self.optimizer)
        parameters = [p for group in self.optimizer.param_groups for p in group["params"]]
        if self.data_parallel is not None:
            # The gradients (and loss) of the global batch, the same in every process.
            value = self.data_parallel.reduce(parameters, value, batch.size)
        norm = torch.nn.utils.clip_grad_norm_(parameters, self.clip_grad_norm or math.inf)
        if math.isfinite(value) and bool(torch.isfinite(norm)):
            self.optimizer.step()
        else:
            self.skipped_steps += 1
            self._warn_once(
                "step",
                f"training step {self.num_steps + 1} was not applied: its loss ({value}) or "
                f"gradient norm ({float(norm)}) is not finite; {self.skipped_steps} step(s) "
                f"skipped so far (see CSIS.skipped_steps)",
            )
        if self.scheduler is not None:
            self.scheduler.step()
        self.num_steps += 1
        self.loss_history.append(value)
        if self.data_parallel is not None:
            self.data_parallel.stepped()
        return value

    def _simulate_valid(
        self, size: int, args: tuple[Any, ...], kwargs: Mapping[str, Any]
    ) -> JointBatch:
        """``size`` joint simulations, without (and counting) those that are not finite."""
        batch = self.simulator(size, args, kwargs)
        self.num_simulations += size
        batch = clean_batch(batch, self.invalid_simulations, self.failed_simulations)
        # Judged over all simulations so far: one batch is too noisy a sample.
        check_invalid_fraction(
            self.invalid_simulations, self.failed_simulations, self.num_simulations
        )
        self._report_dropped()
        return batch

    def _report_dropped(self) -> None:
        for key, counts, what, where in (
            (
                "invalid",
                self.invalid_simulations,
                "with NaN or infinite values or invalid parameters",
                "first",
            ),
            ("failed", self.failed_simulations, "that raised in the model", "last"),
        ):
            if counts:
                listed = ", ".join(f"{n!r}: {c}" for n, c in counts.items())
                self._warn_once(
                    key,
                    f"simulations {what} are dropped from training (so far, by the {where} "
                    f"site: {listed}, of {self.num_simulations}); CSIS.{key}_simulations "
                    f"keeps the count",
                )

    def _warn_once(self, key: str, message: str) -> None:
        if key not in self._warned:
            self._warned.add(key)
            warn_user(message, SimulationWarning)

    def validation_loss(self) -> float:
        """The loss on a fixed batch of ``validation_size`` simulations, drawn once from
        its own random seed (it does not move the training's random stream)."""
        if self.validation_size == 0:
            raise ValueError("this CSIS has no validation batch (validation_size=0)")
        if self._validation_batch is None:
            with untouched_random_state():
                torch.manual_seed(self._validation_seed)
                batch = self.simulator(self.validation_size, self.args, self.kwargs)
            self._validation_batch = clean_batch(batch, {}, {})
        self._train_mode(False)
        with torch.no_grad():
            return float(self.loss(self._validation_batch))

    def train(
        self,
        num_steps: int | None = None,
        batch_size: int | None = None,
        *,
        num_simulations: int | None = None,
        dataset: TraceDataset | None = None,
        validation_fraction: float = 0.1,
        max_epochs: int = 500,
        patience: int = 10,
        average_decay: float = 0.99,
        validate_every: int = 100,
        progress: bool = True,
    ) -> list[float]:
        """Train the guide; returns the losses of the steps taken.

        On a **simulation budget** (for simulators that are expensive to run),
        ``train(num_simulations=N)`` simulates N joint traces once (:meth:`simulate`), or
        ``train(dataset=...)`` takes them ready made, and trains on them for many epochs
        (the recipe of sbi's neural posterior estimation): a random
        ``validation_fraction`` is held out, each epoch goes once over the rest in
        minibatches of ``batch_size`` (default :func:`default_batch_size` of N: N/50
        clamped to [32, 256]), the validation loss is recorded after each epoch in
        :attr:`validation_history`, training stops after ``patience`` epochs without a
        lower validation loss (or ``max_epochs``), and the guide's parameters of the
        lowest validation loss are restored. sbi waits 20 epochs; the averaged parameters
        below make the validation curve smooth enough for 10: on the tasks of
        ``bench/quality.py`` at 10³ and 10⁴ simulations, 3 seeds each, stopping after 10
        kept the best epoch of 20 in 23 of 28 runs, at most 0.014 nats of validation
        loss worse in the others, in 0.72 of the training time. The parameters validated
        and kept are an exponential moving average of the steps' parameters,
        ``θ̄ ← d·θ̄ + (1 - d)·θ`` after every step with ``d = average_decay`` (Polyak &
        Juditsky 1992, as exponential averaging): it smooths out the minibatch noise of
        the last steps, which otherwise decides the proposal's precision far in the
        tails (after 10⁴ simulations, median ESS/N over 3 seeds: the Gaussian at (8, 9)
        0.89 without, 0.95 with; Gaussian linear, 0.81 and 0.87); ``average_decay=0``
        keeps the last step's parameters. On many processes (``torchrun``), the same training is
        ``DataParallel(csis).train(num_simulations=N)``
        (:class:`~infcomp.inference.distributed.DataParallel`).

        **Online** (for cheap simulators), ``train(num_steps, batch_size)`` runs
        ``num_steps`` steps, each on ``batch_size`` fresh simulations (default
        :attr:`training_batch_size`) used once; every ``validate_every`` steps (and after
        the last) the loss on a fixed validation batch is recorded.

        The progress bar (tqdm; ``progress=False`` hides it) shows the losses.

        Raises:
            TypeError: when not exactly one of ``num_steps``, ``num_simulations`` and
                ``dataset`` is given.
            ModelError: when more than half of the simulations are NaN or infinite, or
                more than half of the steps could not be applied.
            ValueError: ``average_decay`` is not in [0, 1).
        """
        modes = [num_steps is not None, num_simulations is not None, dataset is not None]
        if sum(modes) != 1:
            raise TypeError(
                "train needs one of num_steps= (online: fresh simulations every step), "
                "num_simulations= (a simulation budget reused for many epochs) or dataset="
            )
        if batch_size is not None:
            batch_size = check_positive_int("batch_size", batch_size)
        start = time.perf_counter()
        try:
            return self._train(
                num_steps,
                batch_size,
                num_simulations,
                dataset,
                validation_fraction,
                max_epochs,
                patience,
                average_decay,
                validate_every,
                progress,
            )
        finally:
            self.training_seconds += time.perf_counter() - start

    def _train(
        self,
        num_steps: int | None,
        batch_size: int | None,
        num_simulations: int | None,
        dataset: TraceDataset | None,
        validation_fraction: float,
        max_epochs: int,
        patience: int,
        average_decay: float,
        validate_every: int,
        progress: bool,
    ) -> list[float]:
        steps_before, skipped_before = self.num_steps, self.skipped_steps
        if num_steps is not None:
            losses = self._train_online(
                check_positive_int("num_steps", num_steps), batch_size, validate_every, progress
            )
            self._check_steps_applied(steps_before, skipped_before)
            return losses
        if not isinstance(self.guide, nn.Module):
            raise TypeError(
                f"training on a simulation budget restores the best epoch's parameters, so "
                f"the guide must be an nn.Module; guide {program_name(self.guide)} is not: "
                f"train it online (train(num_steps=...))"
            )
        max_epochs = check_positive_int("max_epochs", max_epochs)
        patience = check_positive_int("patience", patience)
        if not 0 <= average_decay < 1:
            raise ValueError(f"average_decay must be in [0, 1), got {average_decay}")
        if dataset is None:
            assert num_simulations is not None
            dataset = self.simulate(num_simulations)
        elif not isinstance(dataset, TraceDataset):
            raise TypeError(f"dataset must be a TraceDataset, got {type(dataset).__name__}")
        else:
            self._check_dataset(dataset)
        if len(dataset) < 2:
            raise ValueError(f"a training dataset needs at least 2 simulations, got {len(dataset)}")
        dropped = sum(dataset.invalid.values()) + sum(dataset.failed.values())
        self.dataset_simulations = len(dataset) + dropped
        losses = self._train_epochs(
            dataset, batch_size, validation_fraction, max_epochs, patience, average_decay, progress
        )
        self._check_steps_applied(steps_before, skipped_before)
        return losses

    def _check_steps_applied(self, steps_before: int, skipped_before: int) -> None:
        """Training whose steps were mostly not applied (non-finite losses or gradients)
        learned nothing it can be trusted with: say so."""
        steps = self.num_steps - steps_before
        skipped = self.skipped_steps - skipped_before
        if steps >= 5 and skipped > steps / 2:
            raise ModelError(
                f"{skipped} of the {steps} training steps were not applied: their loss or "
                f"gradients were not finite (a prior with infinite variance, such as a "
                f"StudentT with df <= 2, or simulations of enormous values overflow); "
                f"the guide has hardly been trained"
            )

    def _check_dataset(self, dataset: TraceDataset) -> None:
        """A dataset simulated from another model (or other arguments) is an error naming
        each difference of its sites from this model's (as :meth:`load` compares)."""
        differences = signature_differences(
            batch_signature(dataset.traces, dataset.sizes),
            probe_signature(self.simulator, self.args, self.kwargs),
            source="dataset",
        )
        if differences:
            raise ModelError(
                f"the dataset's simulations are not of model {program_name(self.model)} "
                f"(with these arguments): " + "; ".join(differences)
            )

    def _train_online(
        self, num_steps: int, batch_size: int | None, validate_every: int, progress: bool
    ) -> list[float]:
        validate_every = check_positive_int("validate_every", validate_every)
        bar = tqdm(range(num_steps), desc="compiling", disable=not progress, leave=False)
        postfix: dict[str, str] = {}
        for done in bar:
            postfix["loss"] = f"{self.step(batch_size=batch_size):.4f}"
            last = done == num_steps - 1
            if self.validation_size and (self.num_steps % validate_every == 0 or last):
                validation = self.validation_loss()
                self.validation_history.append((self.num_steps, validation))
                postfix["validation"] = f"{validation:.4f}"
            bar.set_postfix(postfix, refresh=False)
        bar.close()
        return self.loss_history[-num_steps:]

    def _train_epochs(
        self,
        dataset: TraceDataset,
        batch_size: int | None,
        validation_fraction: float,
        max_epochs: int,
        patience: int,
        average_decay: float,
        progress: bool,
    ) -> list[float]:
        # One draw from the global stream seeds the split and the shuffles: seeded runs repeat.
        generator = torch.Generator().manual_seed(int(torch.randint(2**62, ())))
        training, validation = dataset.split(validation_fraction, generator)
        size = default_batch_size(len(dataset)) if batch_size is None else batch_size
        first_step = self.num_steps
        best_loss, best_state, stale = math.inf, None, 0
        bar = tqdm(range(max_epochs), desc="compiling", disable=not progress, leave=False)
        average = ParameterAverage(self._guide_state(), average_decay)
        for _ in bar:
            for batch in training.batches(size, generator):
                self._gradient_step(batch, self.args, self.kwargs)
                average.update(self._guide_state())
            if not len(validation):
                continue
            current = copy.deepcopy(self._guide_state())
            self._restore_guide_state(average.state)
            # In dataset_loss's batches, not the training's: without gradients a big
            # batch costs about as much as a small one (SLCP at 10³: validation took 5 % of
            # training in the training's batches of 32, 2 % in batches of 256).
            loss = self.dataset_loss(validation)
            self.validation_history.append((self.num_steps, loss))
            bar.set_postfix({"validation": f"{loss:.4f}", "best": f"{min(loss, best_loss):.4f}"})
            if loss < best_loss:
                best_loss, stale = loss, 0
                best_state = copy.deepcopy(average.state)
            else:
                stale += 1
            self._restore_guide_state(current)
            if stale >= patience:
                break
        bar.close()
        self._restore_guide_state(average.state if best_state is None else best_state)
        return self.loss_history[first_step:]

    def simulate(
        self, num_simulations: int, chunk_size: int = 10_000, workers: int | None = None
    ) -> TraceDataset:
        """A training dataset of ``num_simulations`` joint traces of the model (with the
        constructor's arguments and prior inflation), simulated ``chunk_size`` at a time.

        With ``workers=P`` the chunks are seeded (chunk i from ``chunk_seed(s, i)``, s one
        draw from the global stream; see :mod:`infcomp.inference.parallel`) and run by P
        worker processes (P = 1: in this process), so the dataset is the same for a given
        seed whatever P. The pool of workers is kept for later calls with the same P
        (:meth:`close` stops it). The model must then be importable and picklable (at
        module level). ``workers=None`` simulates from the global stream in this process.

        Simulations with NaN or infinite values are dropped and counted (in the dataset's
        ``invalid`` and in :attr:`invalid_simulations`), so the dataset may be smaller
        than asked; more than half invalid raises :class:`~infcomp.errors.ModelError`.
        """
        num_simulations = check_positive_int("num_simulations", num_simulations)
        chunk_size = check_positive_int("chunk_size", chunk_size)

        def check_first(batch: JointBatch) -> None:
            # Before spending the rest of the budget: can minibatches be taken?
            TraceDataset.from_batches([batch]).check_minibatches()

        batches = []
        if workers is not None:
            batches = self._simulate_seeded(num_simulations, chunk_size, workers, check_first)
        remaining = num_simulations if workers is None else 0
        while remaining > 0:
            asked = min(chunk_size, remaining)
            batches.append(self.simulator(asked, self.args, self.kwargs))
            if remaining == num_simulations:
                check_first(batches[0])
            remaining -= asked
        dataset = TraceDataset.from_batches(batches)
        self._count_simulations(num_simulations, dataset.invalid, dataset.failed)
        return dataset

    def _count_simulations(
        self, num_simulations: int, invalid: dict[str, int], failed: dict[str, int]
    ) -> None:
        """Count a budget's simulations and those dropped from it (too many: an error)."""
        check_invalid_fraction(invalid, failed, num_simulations)
        self.num_simulations += num_simulations
        add_counts(self.invalid_simulations, invalid)
        add_counts(self.failed_simulations, failed)
        self._report_dropped()

    def _simulate_seeded(
        self,
        num_simulations: int,
        chunk_size: int,
        workers: int,
        check_first: Callable[[JointBatch], None],
    ) -> list[JointBatch]:
        workers = check_positive_int("workers", workers)
        pool = self._simulation_pool
        if workers > 1 and (pool is None or not pool.fits(self.simulator, workers)):
            if pool is not None:
                pool.close()
            pool = self._simulation_pool = SimulationPool(self.simulator, workers)
        return simulate_chunks(
            self.simulator,
            num_simulations,
            chunk_size,
            pool if workers > 1 else None,
            check_first,
        )

    def close(self) -> None:
        """Stop the worker processes of :meth:`simulate` (``workers`` > 1), if any."""
        if self._simulation_pool is not None:
            self._simulation_pool.close()
            self._simulation_pool = None

    def dataset_loss(self, dataset: TraceDataset, batch_size: int = 256) -> float:
        """The mean of ``-log q(x_i; y_i)`` over a dataset (no gradients); during
        data-parallel training, over the whole dataset of which each process holds a
        share (:class:`~infcomp.inference.dataset.DatasetShare`)."""
        self._train_mode(False)
        total, count = 0.0, 0
        with torch.no_grad():
            for batch in dataset.batches(batch_size):
                if batch.size:
                    total += float(self.loss(batch)) * batch.size
                    count += batch.size
        mean = total / count if count else 0.0
        if self.data_parallel is not None:
            mean = self.data_parallel.reduce([], mean, count)
        return mean

    def _guide_state(self) -> dict[str, Tensor]:
        assert isinstance(self.guide, nn.Module)  # checked by train
        return self.guide.state_dict()

    def _restore_guide_state(self, state: dict[str, Tensor]) -> None:
        assert isinstance(self.guide, nn.Module)
        # Modules made after the best epoch (sites first seen later) keep their values.
        self.guide.load_state_dict(state, strict=False)

    def _train_mode(self, training: bool) -> None:
        if isinstance(self.guide, nn.Module) and self.guide.training != training:
            self.guide.train(training)

    # -- inference ---------------------------------------------------------------------

    def run(
        self,
        *args: Any,
        observations: Mapping[str, Any] | None = None,
        num_particles: int | None = None,
        vectorize: bool | None = None,
        defensive: float = 0.0,
        num_samples: int | None = None,
        **kwargs: Any,
    ) -> Posterior:
        """Importance sampling on the data with the trained guide as proposal.

        ``log w_i = log p(x_i, y) - log q(x_i; y)`` with ``x_i ~ q(x; y)``; see
        :func:`~infcomp.importance`. Call it as ``run(data, num_particles)`` (the model
        arguments are the constructor's) or, as in Pyro, ``run(*model_args,
        observations=data)``. ``num_particles`` defaults to
        :attr:`num_inference_samples` (``num_samples=`` is its deprecated name). With the
        automatic network, ``defensive = ε > 0`` proposes each site from
        ``(1 - ε) q + ε p`` (p its prior), which bounds each site's weight factor by 1/ε.
        """
        options = dict(
            kwargs,
            observations=observations,
            num_particles=num_particles,
            vectorize=vectorize,
            defensive=defensive,
            num_samples=num_samples,
        )
        data, count, importance_options = self._inference_call(args, options)
        return importance(self.model, data, count, **importance_options)

    def run_batch(self, *args: Any, **options: Any) -> BatchPosterior:
        """:meth:`run` for many data sets at once (see :func:`~infcomp.importance_batch`):
        B × N particles in one vectorized call when the model broadcasts; the data sets
        are a list of dicts or one dict of stacked values. Arguments as for :meth:`run`."""
        datasets, count, importance_options = self._inference_call(args, options)
        return importance_batch(self.model, datasets, count, **importance_options)

    def _inference_call(
        self, args: tuple[Any, ...], options: dict[str, Any]
    ) -> tuple[Any, int, Options]:
        """Sort the arguments of :meth:`run`: ``(data, N, options of importance)``; the
        options that are not :meth:`run`'s own are the model's keyword arguments."""
        observations = options.pop("observations", None)
        num_particles = options.pop("num_particles", None)
        num_samples = options.pop("num_samples", None)
        vectorize = options.pop("vectorize", None)
        defensive = options.pop("defensive", 0.0)
        count = renamed_argument("num_samples", num_samples, "num_particles", num_particles)
        given_twice = observations is not None and args and isinstance(args[0], Mapping)
        if given_twice and set(args[0]) == set(observations):
            raise TypeError("give the data once: run(data) or run(observations=data)")
        if observations is None:
            # Our convention: run(data, num_particles), model arguments from the constructor.
            if not args or not isinstance(args[0], (Mapping, list, tuple)):
                raise TypeError(
                    "run needs the observations: run(data) or, as in Pyro, "
                    "run(*model_args, observations=data)"
                )
            observations, args = args[0], args[1:]
            if len(args) == 1 and isinstance(args[0], numbers.Integral) and count is None:
                count, args = args[0], ()
            if args:
                raise TypeError(f"unexpected positional arguments after the data: {args!r}")
        importance_options: Options = {
            "guide": self._proposal(defensive),
            "args": tuple(args) if args else self.args,
            "kwargs": options if options else self.kwargs,
            "vectorize": vectorize,
            "device": self.device,
        }
        count = self.num_inference_samples if count is None else count
        return observations, count, importance_options

    def compiled_proposal(self) -> Any:
        """The trained proposal, as the inference functions take it: ``guide=csis`` in
        :func:`~infcomp.importance`, :func:`~infcomp.importance_batch`,
        :func:`~infcomp.importance_stream`, :func:`~infcomp.smc` and
        :func:`~infcomp.calibration.calibrate` proposes with it (the model's arguments
        are then those of the call, not this CSIS's)."""
        return self._proposal(0.0)

    def _proposal(self, defensive: float) -> Any:
        self._train_mode(False)
        if not defensive:
            return self.proposal
        if self.network is None:
            raise ValueError("defensive proposals need the automatic network")
        return NetworkProposal(self.network, defensive)  # which checks ε

    # -- artifacts ---------------------------------------------------------------------

    def save(self, path: Location) -> None:
        """Save the compiled guide: its ``state_dict``, the optimizer's and scheduler's
        state, and a small config with a format version (never a pickled module). An
        automatic network's config describes its modules, so that :meth:`load` rebuilds
        it without the model. The file also holds the model's site signature (from a
        seeded probe of the model) and a SHA-256 checksum of every part, which
        :meth:`load` verifies (see :mod:`infcomp.inference.artifacts`).

        The file is written atomically: to a temporary file in the same folder, renamed
        over ``path`` when complete, so a failed write keeps the previous file.

        Raises:
            ArtifactError: the guide's parameters hold NaN or infinite values (nothing
                is written).
        """
        if not isinstance(self.guide, nn.Module):
            raise TypeError("only an nn.Module guide can be saved; save your parameters yourself")
        names = {id(p): n for n, p in self.guide.named_parameters()}
        check_finite_state(
            self.guide.state_dict(), set(names.values()), f"not saved to {describe(path)}"
        )
        network = self.network
        write_artifact(
            path,
            {
                "format": FORMAT,
                "format_version": FORMAT_VERSION,
                "guide": self.guide.state_dict(),
                "optimizer": self.optimizer.state_dict(),
                "optimizer_parameters": [
                    [names.get(id(p), "") for p in group["params"]]
                    for group in self.optimizer.param_groups
                ],
                "scheduler": self.scheduler.state_dict() if self.scheduler is not None else None,
                # Training resumed after load continues this random stream (see load).
                "random_state": torch.get_rng_state(),
                "config": {
                    "guide_class": type(self.guide).__qualname__,
                    "model": getattr(self.model, "__qualname__", type(self.model).__name__),
                    "network": network.config_dict() if network is not None else None,
                    "num_steps": self.num_steps,
                    "num_simulations": self.num_simulations,
                    "dataset_simulations": self.dataset_simulations,
                    "invalid_simulations": dict(self.invalid_simulations),
                    "skipped_steps": self.skipped_steps,
                    "training_seconds": self.training_seconds,
                    "metadata": dict(self.metadata),
                    "validation_seed": self._validation_seed,
                    # The constructor's options, which load reuses unless given again.
                    "options": {
                        "prior_inflation": self.simulator.prior_inflation,
                        "training_batch_size": self.training_batch_size,
                        "num_inference_samples": self.num_inference_samples,
                        "validation_size": self.validation_size,
                        "clip_grad_norm": self.clip_grad_norm,
                        "on_error": self.simulator.on_error,
                        # The model's arguments, where they are plain values (None: not).
                        "args": list(self.args) if plain_value(self.args, SAVED) else None,
                        "kwargs": dict(self.kwargs) if plain_value(self.kwargs, SAVED) else None,
                    },
                    "loss_history": list(self.loss_history),
                    "validation_history": [list(item) for item in self.validation_history],
                },
                "signature": probe_signature(self.simulator, self.args, self.kwargs).to_dict(),
            },
        )

    @classmethod
    def load(
        cls,
        path: Location,
        model: Program,
        guide: nn.Module | None = None,
        optimizer: torch.optim.Optimizer | None = None,
        *,
        strict: bool = True,
        restore_random_state: bool = False,
        **options: Any,
    ) -> CSIS:
        """Rebuild a :class:`CSIS` from :meth:`save`'s file.

        ``guide`` is a freshly built module of the saved architecture; leave it out for
        an automatic network, which is rebuilt from the saved config (pass the same
        ``observation_embeddings`` modules if it used any). The parameters, the
        optimizer's and scheduler's state, the step count, the loss histories,
        :attr:`training_seconds` and :attr:`metadata` are restored, so training resumes
        where it stopped. ``options`` are those of the
        constructor (give the same ``scheduler`` to resume its schedule); the saved
        ``prior_inflation``, ``training_batch_size``, ``num_inference_samples``,
        ``validation_size``, ``clip_grad_norm``, ``on_error`` and the model's ``args``
        and ``kwargs`` are used unless given (arguments that are not plain values, such
        as tensors or objects, are not saved: an :class:`~infcomp.errors.ArtifactWarning`
        asks for them).

        The validation batch's seed is restored. With ``restore_random_state=True``, so is
        torch's global (CPU) random state at :meth:`save`, and online training continues
        exactly as if it had not stopped (``train(30)``, ``save``, ``load``, ``train(30)``
        equals ``train(60)`` from the same seed); by default loading leaves the random
        stream alone.

        The file is not trusted: its checksums are verified; an automatic network's
        config is bounded and the shapes it would build are compared with the stored
        tensors before anything is allocated; parameters holding NaN are refused; and
        the model's sites (from a seeded probe, as at :meth:`save`) are compared with the
        saved ones by name, kind, distribution type and shape (the rule for sites that
        occur in only some runs: :func:`~infcomp.inference.artifacts.signature_differences`).
        ``strict=False`` loads an artifact that does not fit the model with an
        :class:`~infcomp.errors.ArtifactWarning` listing the differences instead. Version-1
        files (no checksums or signature) load unverified, with that warning.

        Raises:
            ArtifactError: (a ``ValueError``) a foreign, unreadable, corrupt or
                oversized file, parameters that do not fit the guide or are NaN, missing
                ``observation_embeddings``, or (with ``strict``) a model that differs from
                the saved one; each difference is named.
        """
        where = describe(path)
        saved = read_artifact(path)
        config = saved["config"]
        if guide is None:
            if config.get("network") is None:
                raise ArtifactError(
                    f"{where} holds a user-written {config['guide_class']}: pass a "
                    f"freshly built guide of that class"
                )
            embeddings = options.pop("observation_embeddings", None)
            guide = build_network(
                config["network"], saved["guide"], embeddings, f"the parameters in {where}"
            )
        load_guide_state(
            guide,
            saved["guide"],
            f"the saved parameters (of a {config['guide_class']}) do not fit "
            f"guide {program_name(guide)}",
        )
        if optimizer is None:
            # The same parameter groups in the same order, so that the state loads.
            named = dict(guide.named_parameters())
            groups = [[named[n] for n in names] for names in saved["optimizer_parameters"]]
            learning_rate = options.pop("learning_rate", 1e-3)
            optimizer = default_optimizer(groups[0], learning_rate)
            for group in groups[1:]:
                optimizer.add_param_group({"params": group})
        for name, value in config.get("options", {}).items():
            if value is None and name in ("args", "kwargs"):
                if name not in options:
                    warn_user(
                        f"{where}: the model's {name} were not plain values (numbers, "
                        f"strings, lists), so they were not saved: pass {name}= to load",
                        ArtifactWarning,
                    )
                continue
            if name not in ("validation_batch_size", "validation_size") or (
                "validation_batch_size" not in options and "validation_size" not in options
            ):
                options.setdefault(name, value)
        csis = cls(model, guide, optimizer, **options)
        check_signature(
            saved.get("signature"),
            probe_signature(csis.simulator, csis.args, csis.kwargs),
            strict,
            where,
        )
        load_optimizer_state(csis.optimizer, saved["optimizer"], where)
        if csis.scheduler is not None and saved["scheduler"] is not None:
            csis.scheduler.load_state_dict(saved["scheduler"])
        csis.num_steps = int(config["num_steps"])
        csis.num_simulations = int(config.get("num_simulations", 0))
        csis.dataset_simulations = int(config.get("dataset_simulations", 0))
        csis.invalid_simulations = {
            str(n): int(c) for n, c in config.get("invalid_simulations", {}).items()
        }
        csis.skipped_steps = int(config.get("skipped_steps", 0))
        csis.training_seconds = float(config.get("training_seconds", 0.0))
        csis.metadata = dict(config.get("metadata", {}))
        if "validation_seed" in config:
            csis._validation_seed = int(config["validation_seed"])
        if restore_random_state and saved.get("random_state") is not None:
            torch.set_rng_state(saved["random_state"])
        csis.loss_history = [float(v) for v in config["loss_history"]]
        csis.validation_history = [(int(s), float(v)) for s, v in config["validation_history"]]
        return csis


def default_optimizer(parameters: list[nn.Parameter], learning_rate: float) -> torch.optim.Adam:
    """Adam, in its fused form (one kernel for all parameters) where torch has one."""
    try:
        return torch.optim.Adam(parameters, lr=learning_rate, fused=True)
    except (RuntimeError, ValueError):
        return torch.optim.Adam(parameters, lr=learning_rate)


def adopt_new_parameters(guide: Any, optimizer: torch.optim.Optimizer) -> None:
    """Give ``optimizer`` the parameters of an automatic network's modules made for sites
    first seen in the last batch, leaving its state for the others as it is."""
    if isinstance(guide, InferenceNetwork):
        new = guide.pop_new_parameters()
        if new:
            optimizer.add_param_group({"params": new})
