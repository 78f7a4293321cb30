"""Quality at a fixed simulation budget: compiled inference (infcomp), sbi's NPE + IS, prior IS.

Six tasks, each with an exact answer (or a stated reference):

- ``gaussian``: z ~ N(1, √5); x1, x2 ~ N(z, √2) at (8, 9) (the seed notebook's); closed form.
- ``gaussian_linear``: θ ~ N(0, 0.1·I₁₀), x ~ N(θ, 0.1·I₁₀) (sbi benchmark); closed form.
- ``slcp``: θ ~ U(-3, 3)⁵, four 2-d Normals (Papamakarios et al. 2019); *reference*:
  importance sampling exact in (θ₁, θ₂), ``REFERENCE_PARTICLES`` particles
  (:func:`infcomp.examples.slcp.reference_posterior`).
- ``hmm``: the 16-step 3-state HMM of the tests, at the tests' data (seed 1); the
  figures are the states x_t as numbers; forward-backward and the forward algorithm.
- ``branching``: k ~ Poisson(3), m ~ Poisson(2) only if k > 4, y ~ N(k (+ m), 1) at
  y = 7; the figures are k; enumeration.
- ``marsaglia``: the Gaussian with z drawn by the Marsaglia polar method (a rejection
  loop, so a varying number of sites) at (8, 9); the figures are z; closed form.

The stated observations of ``gaussian_linear`` and ``slcp`` are simulated from the model
after ``torch.manual_seed(OBSERVATION_SEED)``; the simulated observations that give the
medians are drawn after ``torch.manual_seed(SIMULATED_SEED)``, the same for every contender.

Contenders, at each budget of N joint simulations:

- ``infcomp``: ``CSIS`` with its automatic network, trained by :func:`fit_infcomp`:
  ``train(num_simulations=N)``, many epochs over the N simulations with early stopping.
- ``sbi``: NPE (``sbi.inference.NPE``, its default density estimator and training, early
  stopping on its own 10 % validation split) on N simulations of (θ, x), then importance
  sampling with the exact joint: log w = log p(θ, x) - log q(θ | x), q the untruncated flow.
  Where the latents are discrete or vary in number sbi has no posterior to offer: "n/a";
  for ``marsaglia`` it learns q(z | x) for z alone and weighs by p(z, x) ("z only").
  Optional: ``pip install -e '.[sbi]'``; skipped when sbi is not installed.
- ``prior``: ``infcomp.importance`` with the prior as proposal (needs no training).

Figures, for each contender (a table row per task and budget):

- ``ESS/N``: effective sample size over N_p proposals (5,000; ``--particles``) at the stated
  observation, and ``med ESS/N``, its median over ``--observations`` (20) simulated ones;
- ``mean err``, ``sd err``: |posterior mean - exact| / exact sd and |posterior sd - exact sd|
  / exact sd at the stated observation, averaged over the coordinates;
- ``logZ err``: log Ẑ - log p(x) at the stated observation (Ẑ is unbiased, so log Ẑ is low
  on average); the JSON output also holds the medians of the absolute errors over the
  simulated observations;
- ``train s``: training time; ``infer s``: one inference at the stated observation.

The particle-by-particle tasks (``branching``, ``marsaglia``) use at most 1,000 particles
and 5 simulated observations (``SEQUENTIAL_*``) unless ``--particles``/``--observations`` say
otherwise. One torch thread. With ``--seeds 0,1,2`` each figure is the median over the
training seeds; the ESS/N cell then also lists each seed's, in brackets, and the JSON
output holds each seed's figures under ``seeds``.

Run ``python bench/quality.py`` (all tasks at 10³, 10⁴ and 10⁵ simulations; ``make
bench-quality``), ``--budgets 1e3,1e4``, ``--tasks gaussian,hmm``, ``--no-sbi``,
``--quick`` (a smoke test of seconds), ``--markdown FILE``, ``--json FILE``.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import io
import json
import math
import statistics
import sys
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor
from torch.distributions import Distribution, constraints

import infcomp as ic
from infcomp.examples import branching, gaussian, gaussian_linear, hmm, marsaglia, slcp

# isort: split
import harness

DEFAULT_BUDGETS = (10**3, 10**4, 10**5)
PARTICLES = 5000  # proposals per inference
OBSERVATIONS = 20  # simulated observations for the medians
SEQUENTIAL_PARTICLES, SEQUENTIAL_OBSERVATIONS = 1000, 5  # particle-by-particle tasks
OBSERVATION_SEED = 1  # the stated observation of the simulated-data tasks
SIMULATED_SEED = 1000  # the observations behind the medians
REFERENCE_PARTICLES = 10**6  # SLCP's reference posterior
QUICK_REFERENCE_PARTICLES = 10**4  # and with --quick
ACCEPTANCE_DRAWS = 2 * 10**4  # sbi's flow, truncated to a bounded prior (SLCP)
HMM_STEPS = 16
CONTENDERS = ("infcomp", "sbi", "prior")

Data = dict[str, Tensor]
Runner = Callable[[Data, int], ic.Posterior]  # (observation, particles) -> posterior


# -- tasks -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Answer:
    """The exact (or reference) posterior mean and sd of a task's figures, and log p(x)."""

    mean: Tensor
    std: Tensor
    log_evidence: float


@dataclass(frozen=True)
class SbiView:
    """What sbi sees of a task: θ (a function of a simulated trace) and the model whose
    joint p(θ, x) weighs its proposals, θ at site ``site`` of that model."""

    theta: Callable[[ic.Trace], Tensor]
    model: Callable[..., Any]
    site: str
    note: str = ""  # shown beside the figures, e.g. "z only"
    inside: Callable[[Tensor], Tensor] | None = None  # the prior's support, if bounded


@dataclass(frozen=True)
class Task:
    name: str
    model: Callable[..., Any]
    observed: tuple[str, ...]  # the observe sites, in order
    exact: Callable[[Data], Answer]
    summary: Callable[[ic.Posterior], tuple[Tensor, Tensor]]  # posterior mean, sd
    observation: Callable[[], Data]  # the stated observation
    args: tuple[Any, ...] = ()
    sequential: bool = False  # runs particle by particle
    sbi: SbiView | None = None
    reference: str = "exact"


def returned(post: ic.Posterior) -> tuple[Tensor, Tensor]:
    """Mean and sd of the program's return value (z for the Gaussians, k for branching)."""
    value = lambda trace: trace.return_value  # noqa: E731
    return post.mean(value).reshape(-1), post.std(value).reshape(-1)


def of_site(site: str) -> Callable[[ic.Posterior], tuple[Tensor, Tensor]]:
    return lambda post: (post.mean(site).reshape(-1), post.std(site).reshape(-1))


def hmm_states(post: ic.Posterior) -> tuple[Tensor, Tensor]:
    names = [f"x_{t}" for t in range(HMM_STEPS)]
    return torch.stack([post.mean(n) for n in names]), torch.stack([post.std(n) for n in names])


def normal_answer(posterior: Distribution, log_evidence: float) -> Answer:
    return Answer(posterior.mean.reshape(-1), posterior.stddev.reshape(-1), log_evidence)


def gaussian_answer(data: Data) -> Answer:
    x1, x2 = float(data["x1"]), float(data["x2"])
    return normal_answer(gaussian.exact_posterior(x1, x2), gaussian.exact_log_evidence(x1, x2))


def gaussian_linear_answer(data: Data) -> Answer:
    x = data["x"]
    return normal_answer(gaussian_linear.exact_posterior(x), gaussian_linear.exact_log_evidence(x))


def slcp_answer(data: Data, num_particles: int = REFERENCE_PARTICLES) -> Answer:
    reference = slcp.reference_posterior(data["x"], num_particles=num_particles)
    return Answer(reference.mean, reference.std, reference.log_evidence)


def hmm_answer(data: Data) -> Answer:
    marginals = hmm.posterior_marginals(data, HMM_STEPS)  # (T, 3)
    states = torch.arange(3, dtype=torch.float64)
    mean = marginals @ states
    std = (marginals @ states**2 - mean**2).clamp_min(0).sqrt()
    return Answer(mean, std, hmm.forward_log_evidence(data, HMM_STEPS))


def branching_answer(data: Data) -> Answer:
    posterior_k, log_evidence = branching.enumerate_posterior(float(data["y"]))
    k = torch.arange(len(posterior_k), dtype=torch.float64)
    mean = (posterior_k * k).sum()
    std = (posterior_k * (k - mean) ** 2).sum().sqrt()
    return Answer(mean.reshape(1), std.reshape(1), log_evidence)


def simulated(
    model: Callable[..., Any], observed: Sequence[str], args: tuple[Any, ...] = ()
) -> Data:
    """One observation simulated from the model (its observe sites sample)."""
    trace = ic.trace(ic.uncondition(model)).get_trace(*args)
    return {name: trace[name].value.detach() for name in observed}


def seeded(seed: int, make: Callable[[], Data]) -> Callable[[], Data]:
    def observation() -> Data:
        state = torch.get_rng_state()
        torch.manual_seed(seed)
        try:
            return make()
        finally:
            torch.set_rng_state(state)

    return observation


HMM_SITES = tuple(f"y_{t}" for t in range(HMM_STEPS))
z_view = SbiView(lambda trace: trace.return_value, gaussian.gaussian, "z")
TASKS = {
    task.name: task
    for task in (
        Task(
            "gaussian",
            gaussian.gaussian,
            ("x1", "x2"),
            gaussian_answer,
            returned,
            lambda: dict(gaussian.DATA),
            sbi=z_view,
        ),
        Task(
            "gaussian_linear",
            gaussian_linear.gaussian_linear,
            ("x",),
            gaussian_linear_answer,
            of_site("theta"),
            seeded(OBSERVATION_SEED, lambda: simulated(gaussian_linear.gaussian_linear, ("x",))),
            sbi=SbiView(
                lambda trace: trace["theta"].value, gaussian_linear.gaussian_linear, "theta"
            ),
        ),
        Task(
            "slcp",
            slcp.slcp,
            ("x",),
            slcp_answer,
            of_site("theta"),
            seeded(OBSERVATION_SEED, lambda: simulated(slcp.slcp, ("x",))),
            sbi=SbiView(
                lambda trace: trace["theta"].value,
                slcp.slcp,
                "theta",
                inside=lambda theta: (theta.abs() < slcp.BOUND).all(-1),
            ),
            reference=f"reference: IS exact in θ₁, θ₂, {REFERENCE_PARTICLES:.0e} particles",
        ),
        Task(
            "hmm",
            hmm.hmm,
            HMM_SITES,
            hmm_answer,
            hmm_states,
            seeded(1, lambda: hmm.simulate_data(HMM_STEPS)),
            args=(HMM_STEPS,),
        ),
        Task(
            "branching",
            branching.branching,
            ("y",),
            branching_answer,
            returned,
            lambda: dict(branching.DATA),
            sequential=True,
        ),
        Task(
            "marsaglia",
            marsaglia.marsaglia,
            ("x1", "x2"),
            gaussian_answer,
            returned,
            lambda: dict(gaussian.DATA),
            sequential=True,
            sbi=SbiView(lambda trace: trace.return_value, gaussian.gaussian, "z", "z only"),
        ),
    )
}


# -- contenders --------------------------------------------------------------------------


def fit_infcomp(task: Task, num_simulations: int, seed: int) -> Runner:
    """Compile ``task``'s model on ``num_simulations`` joint simulations from ``seed``:
    ``CSIS.train(num_simulations=N)``, many epochs over the N simulations with early
    stopping on a 10 % held-out part of them. The network's construction probes the
    model with a few simulations that it does not train on.
    """
    torch.manual_seed(seed)
    csis = ic.CSIS(task.model, args=task.args, validation_size=0)
    csis.train(num_simulations=num_simulations, progress=False)
    return with_steps(lambda data, n: csis.run(data, num_particles=n), csis.num_steps)


def with_steps(runner: Runner, steps: int) -> Runner:
    """``runner``, carrying the number of optimizer steps its training took."""
    runner.train_steps = steps  # type: ignore[attr-defined]
    return runner


def fit_prior(task: Task, num_simulations: int, seed: int) -> Runner:
    """Prior importance sampling: nothing to train."""
    return lambda data, n: ic.importance(task.model, data, n, args=task.args)


def sbi_available() -> bool:
    return importlib.util.find_spec("sbi") is not None


class FlowProposal(Distribution):
    """sbi's conditional density estimator at one observation x, as a torch
    distribution over θ (``event_shape``), expandable to a batch of particles.

    With a bounded prior (``inside``) the flow is truncated to the prior's support, as
    sbi's ``DirectPosterior`` does: draws outside are rejected, and
    log q(θ) = log flow(θ) - log P(inside), P estimated once from ``ACCEPTANCE_DRAWS``
    draws (it shifts log Ẑ by its error alone, not the ESS or the moments).
    """

    arg_constraints: dict[str, constraints.Constraint] = {}  # noqa: RUF012 (torch's API)
    has_rsample = False

    def __init__(
        self,
        estimator: Any,
        x: Tensor,
        event_shape: torch.Size,
        inside: Callable[[Tensor], Tensor] | None = None,
        batch_shape: tuple[int, ...] = (),
        log_acceptance: float | None = None,
    ) -> None:
        self.estimator, self.x, self.inside = estimator, x, inside
        super().__init__(torch.Size(batch_shape), torch.Size(event_shape), validate_args=False)
        if log_acceptance is None:
            log_acceptance = 0.0
            if inside is not None:
                accepted = inside(self._draw(ACCEPTANCE_DRAWS)).double().mean()
                if accepted == 0:
                    raise RuntimeError("sbi's flow puts no mass inside the prior's support")
                log_acceptance = float(accepted.log())
        self.log_acceptance = log_acceptance

    @property
    def support(self) -> constraints.Constraint:  # type: ignore[override]
        return constraints.independent(constraints.real, len(self.event_shape))

    def expand(self, batch_shape: Any, _instance: Any = None) -> FlowProposal:
        return FlowProposal(
            self.estimator,
            self.x,
            self.event_shape,
            self.inside,
            torch.Size(batch_shape),
            self.log_acceptance,
        )

    def _draw(self, count: int) -> Tensor:
        with torch.no_grad():
            theta = self.estimator.sample(torch.Size((count,)), condition=self.x)
        return theta.reshape((count, *self.event_shape))

    def sample(self, sample_shape: Any = ()) -> Tensor:
        shape = torch.Size(sample_shape) + self.batch_shape
        count = math.prod(shape)
        theta = self._draw(count)
        if self.inside is not None:
            kept = theta[self.inside(theta)]
            while len(kept) < count:
                more = math.ceil(1.2 * (count - len(kept)) / math.exp(self.log_acceptance))
                theta = self._draw(more)
                kept = torch.cat([kept, theta[self.inside(theta)]])
            theta = kept[:count]
        return theta.reshape(shape + self.event_shape)

    def log_prob(self, value: Tensor) -> Tensor:
        shape = value.shape[: value.dim() - len(self.event_shape)]
        flat = value.reshape(-1, 1, math.prod(self.event_shape))
        with torch.no_grad():
            log_q = self.estimator.log_prob(flat, condition=self.x) - self.log_acceptance
        return log_q.reshape(shape)


def flat_x(task: Task, data: Data, batch: int | None = None) -> Tensor:
    parts = [torch.as_tensor(data[n]).float() for n in task.observed]
    if batch is None:
        return torch.cat([p.reshape(1, -1) for p in parts], -1)
    return torch.cat([p.reshape(batch, -1) for p in parts], -1)


def fit_sbi(task: Task, num_simulations: int, seed: int) -> Runner | None:
    """sbi's NPE on ``num_simulations`` simulations of (θ, x), then importance sampling
    with the exact joint of ``task.sbi.model``; None where sbi does not apply."""
    view = task.sbi
    if view is None:
        return None
    from sbi.inference import NPE

    torch.manual_seed(seed)
    thetas, xs = [], []
    batch = ic.JointSimulator(task.model, task.args)(num_simulations)
    for trace, size in zip(batch.traces, batch.sizes):
        thetas.append(view.theta(trace).reshape(size, -1).float())
        xs.append(flat_x(task, {n: trace[n].value for n in task.observed}, size))
    theta, x = torch.cat(thetas), torch.cat(xs)
    event_shape = view.theta(batch.traces[0]).shape[1:]
    inference = NPE(show_progress_bars=False)
    with contextlib.redirect_stdout(io.StringIO()):  # sbi prints when it converges
        estimator = inference.append_simulations(theta, x).train()
    estimator.eval()
    # sbi's defaults: 10 % held out, full minibatches of 200 only (its loader drops the
    # last); its summary counts the epochs.
    training = int((1 - 0.1) * num_simulations)
    steps = inference._summary["epochs_trained"][-1] * (training // min(200, training))

    def run(data: Data, n: int) -> ic.Posterior:
        proposal = FlowProposal(estimator, flat_x(task, data), event_shape, view.inside)

        def guide(*args: Any, observations: Data | None = None) -> Tensor:
            return ic.sample(view.site, proposal)

        return ic.importance(view.model, data, n, guide=guide)

    return with_steps(run, steps)


FITS: dict[str, Callable[[Task, int, int], Runner | None]] = {
    "infcomp": fit_infcomp,
    "sbi": fit_sbi,
    "prior": fit_prior,
}


# -- figures -----------------------------------------------------------------------------


@dataclass
class Figures:
    """One contender's figures on one task at one budget (one seed)."""

    ess: float = math.nan  # ESS/N at the stated observation
    median_ess: float = math.nan  # median ESS/N over the simulated observations
    mean_error: float = math.nan
    std_error: float = math.nan
    log_z_error: float = math.nan
    median_mean_error: float = math.nan
    median_std_error: float = math.nan
    median_abs_log_z_error: float = math.nan
    train_seconds: float = math.nan
    train_steps: float = math.nan  # optimizer steps of the training (prior: none)
    infer_seconds: float = math.nan
    note: str = ""


def errors(task: Task, post: ic.Posterior, answer: Answer) -> tuple[float, float, float, float]:
    """(ESS/N, mean error, sd error, log Ẑ error), the errors in units of the exact sd."""
    mean, std = task.summary(post)
    mean, std = mean.double(), std.double()
    mean_error = float(((mean - answer.mean).abs() / answer.std).mean())
    std_error = float(((std - answer.std).abs() / answer.std).mean())
    log_z = float(post.log_evidence) - answer.log_evidence
    return float(post.ess) / post.num_particles, mean_error, std_error, log_z


def evaluate(
    task: Task,
    runner: Runner,
    stated: tuple[Data, Answer],
    others: list[tuple[Data, Answer]],
    particles: int,
) -> Figures:
    figures = Figures()
    start = time.perf_counter()
    post = runner(stated[0], particles)
    figures.infer_seconds = time.perf_counter() - start
    figures.ess, figures.mean_error, figures.std_error, figures.log_z_error = errors(
        task, post, stated[1]
    )
    rows = [errors(task, runner(data, particles), answer) for data, answer in others]
    if rows:
        figures.median_ess = statistics.median(r[0] for r in rows)
        figures.median_mean_error = statistics.median(r[1] for r in rows)
        figures.median_std_error = statistics.median(r[2] for r in rows)
        figures.median_abs_log_z_error = statistics.median(abs(r[3]) for r in rows)
    return figures


def median_figures(runs: list[Figures]) -> Figures:
    """The median over training seeds of each figure."""
    result = Figures(note=runs[0].note)
    for name in Figures.__dataclass_fields__:
        if name != "note":
            setattr(result, name, statistics.median(getattr(r, name) for r in runs))
    return result


@dataclass
class Row:
    task: str
    budget: int
    figures: dict[str, Figures] = field(default_factory=dict)  # contender -> median figures
    seeds: dict[str, list[Figures]] = field(default_factory=dict)  # contender -> each seed's


# -- table -------------------------------------------------------------------------------

COLUMNS = (
    ("ESS/N", lambda f: f.ess),
    ("med ESS/N", lambda f: f.median_ess),
    ("mean err", lambda f: f.mean_error),
    ("sd err", lambda f: f.std_error),
    ("logZ err", lambda f: f.log_z_error),
    ("train s", lambda f: f.train_seconds),
    ("infer s", lambda f: f.infer_seconds),
)


def cell(figures: Figures | None, get: Callable[[Figures], float]) -> str:
    if figures is None:
        return "n/a"
    value = get(figures)
    return "-" if math.isnan(value) else harness.number(value)


def table(rows: list[Row], contenders: Sequence[str]) -> str:
    head = ["task", "N"] + [f"{c} {name}" for c in contenders for name, _ in COLUMNS]
    lines = []
    for row in rows:
        cells = [row.task, f"{row.budget:.0e}".replace("e+0", "e")]
        for contender in contenders:
            figures = row.figures.get(contender)
            values = [cell(figures, get) for _, get in COLUMNS]
            if figures is not None and figures.note:
                values[0] += f" ({figures.note})"
            runs = row.seeds.get(contender, [])
            if len(runs) > 1:  # the median, then each training seed's figure
                values[0] += " [" + ", ".join(cell(run, COLUMNS[0][1]) for run in runs) + "]"
            cells += values
        lines.append(cells)
    out = ["| " + " | ".join(head) + " |", "|---|---|" + "---:|" * (len(head) - 2)]
    return "\n".join(out + ["| " + " | ".join(line) + " |" for line in lines])


def describe(figures: Figures) -> str:
    return ", ".join(
        f"{name} {harness.number(value)}"
        for name, value in vars(figures).items()
        if isinstance(value, float) and not math.isnan(value)
    )


# -- main --------------------------------------------------------------------------------


def numbers(text: str) -> list[int]:
    """Whole numbers separated by commas (``1e3,1e4`` or ``0,1,2``), at least one."""
    try:
        values = [float(part) for part in text.split(",") if part]
    except ValueError:
        values = []
    if not values or not all(v.is_integer() for v in values):
        raise argparse.ArgumentTypeError(
            f"expected whole numbers separated by commas, got {text!r}"
        )
    return [int(v) for v in values]


def names(text: str) -> list[str]:
    chosen = [part for part in text.split(",") if part]
    if not chosen:
        raise argparse.ArgumentTypeError(f"expected task names separated by commas, got {text!r}")
    unknown = [name for name in chosen if name not in TASKS]
    if unknown:
        raise argparse.ArgumentTypeError(f"unknown task(s) {unknown}; the tasks are {list(TASKS)}")
    return chosen


def parse(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Quality at a fixed simulation budget: infcomp vs sbi NPE+IS vs prior IS."
    )
    parser.add_argument("--budgets", type=numbers, help="simulation budgets (1e3,1e4,1e5)")
    parser.add_argument("--tasks", type=names, default=list(TASKS), help=",".join(TASKS))
    parser.add_argument("--seeds", type=numbers, default=[0], help="training seeds (0)")
    parser.add_argument("--particles", type=int, help=f"proposals per inference ({PARTICLES})")
    parser.add_argument(
        "--observations", type=int, help=f"simulated observations for the medians ({OBSERVATIONS})"
    )
    parser.add_argument("--no-sbi", action="store_true", help="leave sbi out")
    parser.add_argument("--quick", action="store_true", help="a tiny run (a smoke test)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (0: torch's)")
    parser.add_argument("--markdown", type=Path, help="also write the table as Markdown here")
    parser.add_argument("--json", type=Path, help="write every figure as JSON here")
    options = parser.parse_args(argv)
    if options.budgets is None:
        options.budgets = [200] if options.quick else list(DEFAULT_BUDGETS)
    if any(b < 1 for b in options.budgets) or any(s < 0 for s in options.seeds):
        parser.error("budgets must be positive and seeds at least 0")
    if (options.particles is not None and options.particles < 2) or (
        options.observations is not None and options.observations < 0
    ):
        parser.error("--particles must be at least 2 and --observations at least 0")
    if options.threads < 0:
        parser.error("--threads must be at least 0")
    return options


def settings(task: Task, options: argparse.Namespace) -> tuple[int, int]:
    """(particles, simulated observations) for ``task``."""
    if options.quick:
        particles, observations = 200, 2
    elif task.sequential:
        particles, observations = SEQUENTIAL_PARTICLES, SEQUENTIAL_OBSERVATIONS
    else:
        particles, observations = PARTICLES, OBSERVATIONS
    particles = options.particles if options.particles is not None else particles
    observations = options.observations if options.observations is not None else observations
    return particles, observations


def answered(task: Task, data: Data, quick: bool) -> tuple[Data, Answer]:
    if task.name == "slcp" and quick:
        return data, slcp_answer(data, num_particles=QUICK_REFERENCE_PARTICLES)
    return data, task.exact(data)


def write(
    options: argparse.Namespace,
    header: str,
    rows: list[Row],
    contenders: Sequence[str],
    notes: list[str],
    seconds: float | None,
) -> None:
    """The ``--markdown`` and ``--json`` files (after each task, so that a long run
    stopped early keeps what it measured; ``seconds`` is None until the end)."""
    if options.markdown:
        total = "unfinished" if seconds is None else f"{seconds:.0f} s"
        options.markdown.write_text(
            f"# infcomp quality benchmark\n\n{header}\n\n{table(rows, contenders)}\n\n"
            + "\n".join(f"- {n}" for n in notes)
            + f"\n\nTotal time: {total}.\n",
            encoding="utf-8",
        )
    if options.json:
        records = [
            {
                "task": r.task,
                "budget": r.budget,
                "figures": {c: finite_or_null(f) for c, f in r.figures.items()},
                "seeds": {c: [finite_or_null(f) for f in runs] for c, runs in r.seeds.items()},
            }
            for r in rows
        ]
        options.json.write_text(json.dumps(records, indent=1), encoding="utf-8")


def finite_or_null(figures: Figures) -> dict[str, Any]:
    """The figures as a JSON object; NaN (a figure that does not apply) as null."""
    return {k: None if v != v else v for k, v in vars(figures).items()}


def main(argv: Sequence[str] | None = None) -> int:
    options = parse(argv)
    if options.threads > 0:
        torch.set_num_threads(options.threads)
    contenders = [c for c in CONTENDERS if c != "sbi" or not options.no_sbi]
    if "sbi" in contenders and not sbi_available():
        print("sbi is not installed (pip install -e '.[sbi]'): left out", flush=True)
        contenders.remove("sbi")
    header = f"{harness.versions(pyro=False)}"
    if "sbi" in contenders:
        import sbi

        header += f", sbi {sbi.__version__}"
    header += f"; {torch.get_num_threads()} torch threads; training seeds {options.seeds}"
    print(header, flush=True)
    started = time.perf_counter()
    rows: list[Row] = []
    notes: list[str] = []
    for name in options.tasks:
        task = TASKS[name]
        particles, count = settings(task, options)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # ESS warnings, fallback notices, sbi's
            stated = answered(task, task.observation(), options.quick)
            torch.manual_seed(SIMULATED_SEED)
            others = [
                answered(task, simulated(task.model, task.observed, task.args), options.quick)
                for _ in range(count)
            ]
            notes.append(
                f"{name}: {particles} particles, {count} simulated observations, "
                + ("exact answers" if task.reference == "exact" else task.reference)
                + (" (--quick: 1e4 particles)" if options.quick and name == "slcp" else "")
            )
            print(f"\n== {notes[-1]} ==", flush=True)
            prior: Figures | None = None
            for budget in options.budgets:
                row = Row(name, budget)
                for contender in contenders:
                    if contender == "prior" and prior is not None:
                        row.figures["prior"] = prior  # it does not depend on the budget
                        continue
                    runs = []
                    for seed in options.seeds:
                        start = time.perf_counter()
                        runner = FITS[contender](task, budget, seed)
                        if runner is None:
                            break
                        train_seconds = time.perf_counter() - start
                        torch.manual_seed(seed)
                        figures = evaluate(task, runner, stated, others, particles)
                        figures.train_seconds = math.nan if contender == "prior" else train_seconds
                        figures.train_steps = float(getattr(runner, "train_steps", math.nan))
                        if contender == "sbi" and task.sbi is not None:
                            figures.note = task.sbi.note
                        runs.append(figures)
                        if len(options.seeds) > 1:
                            where = f"N = {budget:.0e}, {contender}, seed {seed}"
                            print(f"  {where}: {describe(figures)}")
                    if runs:
                        row.figures[contender] = median_figures(runs)
                        row.seeds[contender] = runs
                        print(
                            f"  N = {budget:.0e}, {contender}: {describe(row.figures[contender])}"
                        )
                    if contender == "prior":
                        prior = row.figures.get("prior")
                rows.append(row)
        write(options, header, rows, contenders, notes, None)
    seconds = time.perf_counter() - started
    print("\n" + table(rows, contenders) + "\n\n" + "\n".join(notes) + f"\n\ntotal {seconds:.0f} s")
    write(options, header, rows, contenders, notes, seconds)
    return 0


if __name__ == "__main__":
    sys.exit(main())
