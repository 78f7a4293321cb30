"""The automatic inference network: a proposal for every latent site, built from the model.

Le, Baydin & Wood (AISTATS 2017). Observations are embedded once (one embedding per
observe site, summed into a context vector). A recurrent core (an LSTM cell) then walks
the latent sites in program order; at site t its input is

    [context, attended evidence a_t, address embedding of the site's family,
     features of the loop index, embedding of the previous site's value],

and a head chosen by the site's prior support maps ``[h_t, context, a_t]`` (the LSTM's
state and, skipping the core, the observation context and the attended evidence) to the
proposal q(x_t | x_<t, y). The attended evidence a_t (with
``NetworkConfig(attention=True)``; without it a_t is left out) lets a latent site read the
observations that matter for it (in a hidden Markov model, the emission at its own
step) rather than only their sum: scaled dot-product attention (Vaswani et al. 2017)
over the observe sites' embeddings, whose keys are a learned embedding of each observe
site's family with the features of its loop index, and whose query is made from the
latent site's address embedding and index features (:class:`ObservationAttention`).
The context is unbounded: a head read off the LSTM's state alone
(bounded by its tanh) could not move its proposal far enough for observations in the
tails of the simulations. Sites named
with a loop index (``x_3``, ``x[3]``) share one family:
its address embedding, value embedding and head, with the index as an input.

Inference wraps it in a :class:`~infcomp.inference.NetworkProposal`: importance sampling asks it
for a proposer per run, which proposes each latent site as the model reaches it (a site
of a family never seen in training is proposed from its prior, and the network carries
on after it). Training scores joint simulations site by site with the same code
(:meth:`InferenceNetwork.log_prob_trace`).
"""

from __future__ import annotations

import copy
import functools
import math
import re
import warnings
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, replace
from typing import Any

import torch
from torch import Tensor, nn
from torch.distributions import Distribution

from infcomp._deprecation import user_stacklevel, warn_renamed
from infcomp.distributions import DefensiveMixture, concatenate_distributions
from infcomp.errors import InferenceWarning, ModelError
from infcomp.nn.embeddings import MLPEmbedding
from infcomp.nn.heads import (
    FlowHead,
    HeadSpec,
    Readout,
    UnsupportedSiteError,
    head_class,
    head_spec,
    integer_range,
    make_head,
    saved_integer_range,
)
from infcomp.runtime import Site, Trace, sum_rightmost

INDEX_FEATURES = 8
#: Rows of the core's state computed together (:meth:`NetworkProposer._step`).
CHUNK_ROWS = 4096
#: ``NetworkConfig(attention=None)`` turns attention on for models with at least this
#: many observe sites in a run.
ATTENTION_MIN_OBSERVATIONS = 4
#: The version of :meth:`InferenceNetwork.config_dict`'s architecture; 2 added the heads'
#: skip connection from the context, standardized observation embeddings and flow heads;
#: 3 pushes the heads of interval sites through the Normal CDF rather than the logistic
#: (:func:`~infcomp.nn.heads.unconstraining_transform`). The attention over observe
#: sites is an option within it (``attention``, absent: off), so that networks saved
#: without it keep loading.
NETWORK_VERSION = 3
_INDEXED = re.compile(r"^(?P<base>.*?)(?:_|\[)?(?P<index>\d+)\]?$")


def split_index(name: str) -> tuple[str, int | None]:
    """A site name's family and loop index: ``"x_12"``, ``"x12"``, ``"x[12]"`` → ``("x", 12)``."""
    match = _INDEXED.match(name)
    if match is None or not match.group("base"):
        return name, None
    return match.group("base"), int(match.group("index"))


def index_features(index: int | None) -> Tensor:
    """Features of a loop index: ``log1p(i)`` and sines and cosines of ``i / 4^k``, k < 3,
    plus a flag for "has an index" (all zero without one)."""
    if index is None:
        return torch.zeros(INDEX_FEATURES)
    scales = torch.tensor([1.0, 4.0, 16.0])
    angles = index / scales
    return torch.cat([torch.tensor([1.0, math.log1p(index)]), torch.sin(angles), torch.cos(angles)])


@dataclass(frozen=True)
class NetworkConfig:
    """Sizes and options of an :class:`InferenceNetwork`.

    Attributes:
        hidden_size: the LSTM core's hidden size.
        observation_size: the width of the observation context.
        address_size: the width of a site family's address embedding.
        value_size: the width of the previous value's embedding.
        components: mixture components of the real and count heads.
        max_categories: integer ranges up to this size get a Categorical head, larger
            ones a discretized-logistic head.
        prior_sites: site names or families to propose from their prior instead of a
            head; ``("*unsupported*",)`` does so for every site no head covers.
        flows: continuous vector sites (unconstrained event size > 1) get a joint
            normalizing-flow head (:class:`~infcomp.nn.heads.FlowHead`); False gives
            them the diagonal Normal mixtures of the scalar sites (cheaper, no
            correlations).
        attention: each latent site also attends over the observe sites, keyed by their
            family and loop index (:class:`ObservationAttention`), which helps where a
            latent depends on a few of many observations (a hidden Markov model's state
            on its own step's emission: ESS/N 0.08 without, 0.64 with, after 10⁴
            simulations); False gives the latent sites only the summed context, which
            trains faster and better on models with few observe sites (the Gaussian's
            two). None (the default) decides from the simulations the network is built
            from (:meth:`InferenceNetwork.from_traces`): on where a trace has at least
            :data:`ATTENTION_MIN_OBSERVATIONS` observe sites; a network built directly
            takes None as False. The network's :attr:`config` holds the decision.
    """

    hidden_size: int = 64
    observation_size: int = 64
    address_size: int = 16
    value_size: int = 16
    components: int = 5
    max_categories: int = 256
    prior_sites: tuple[str, ...] = ()
    flows: bool = True
    attention: bool | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> NetworkConfig:
        values = dict(data)
        values["prior_sites"] = tuple(values.get("prior_sites", ()))
        return cls(**values)


UNSUPPORTED = "*unsupported*"


@dataclass
class Family:
    """A group of latent sites sharing a head: same name stem, prior type and shapes."""

    key: str
    base: str
    lookup: tuple[Any, ...]
    spec: HeadSpec | None  # None: proposed from the prior


@dataclass
class _ObservationSlot:
    key: str
    shape: tuple[int, ...]
    family: str  # the key of its observe family's address in ObservationAttention
    features: Tensor  # of its loop index


@dataclass(frozen=True)
class Evidence:
    """The embedded observations of a run, as the proposer reads them.

    Attributes:
        context: the summed context, shape ``lead + (observation_size,)``.
        values: each present observe site's projected embedding, ``lead + (n, observation_size)``.
        keys: the attention keys of those sites, ``(n, attention_size)``; None without
            attention.
    """

    context: Tensor
    values: Tensor
    keys: Tensor | None


ATTENTION_SIZE = 32


class ObservationAttention(nn.Module):
    """Scaled dot-product attention of latent sites over observe sites, keyed by address.

    An observe site j of family g (``"y"`` for ``"y_3"``) with loop index i_j has the key
    ``k_j = W_k [e_g, φ(i_j)]``, with ``e_g`` a learned embedding of its family and φ the
    :func:`index_features`; a latent site with address embedding ``u`` and index t asks
    with the query ``q = W_q [u, φ(t)]``. Its attended evidence is

        ``a = Σ_j softmax_j(q·k_j / √D) v_j``

    over the observe sites present, with ``v_j`` their projected embeddings. The weights
    depend on the sites only, not on the data, so ``a`` is computed once per site on the
    data's rows however many particles share them.

    Args:
        address_size: the width of the latent and observe family embeddings.
        attention_size: D, the width of queries and keys.
    """

    def __init__(self, address_size: int, attention_size: int = ATTENTION_SIZE) -> None:
        super().__init__()
        self.address_size = address_size
        self.families = nn.ParameterDict()
        self.query = nn.Linear(address_size + INDEX_FEATURES, attention_size)
        self.key = nn.Linear(address_size + INDEX_FEATURES, attention_size)

    def keys(self, families: list[str], features: Tensor) -> Tensor:
        """The keys ``(n, D)`` of observe sites of these family keys with index features
        ``(n, INDEX_FEATURES)``."""
        addresses = torch.stack([self.families[family] for family in families])
        return self.key(torch.cat([addresses, features.to(addresses)], dim=-1))

    def weights(self, keys: Tensor, address: Tensor, features: Tensor) -> Tensor:
        """Attention weights ``(n,)`` of a latent site over observe sites with ``keys``."""
        query = self.query(torch.cat([address, features.to(address)], dim=-1))
        return torch.softmax(keys @ query / math.sqrt(keys.shape[-1]), dim=-1)


class InferenceNetwork(nn.Module):
    """The proposal network q(x; y) of inference compilation (see the module docstring).

    :class:`~infcomp.inference.CSIS` and :class:`~infcomp.inference.RWS` build it when
    given no guide, by simulating the model: :meth:`from_traces` makes modules for the
    observe sites and latent site families of some joint traces; modules for sites first
    seen later are added by :meth:`register` during training (their parameters come out
    of :meth:`pop_new_parameters`, for the optimizer).

    Args:
        config: sizes and options.
        embeddings: a module per observe-site name to embed that observation (values
            ``(M, *shape)`` to features ``(M, F)``); others get :class:`MLPEmbedding`.

    Example:
        >>> from torch.distributions import Normal
        >>> import infcomp as ic
        >>> from infcomp.nn import InferenceNetwork
        >>> def model():
        ...     z = ic.sample("z", Normal(0.0, 1.0))
        ...     ic.observe("y", Normal(z, 1.0))
        >>> trace = ic.trace(ic.uncondition(model)).get_trace()  # one joint simulation
        >>> network = InferenceNetwork.from_traces([trace])
        >>> sorted(network.observations), [f.spec.kind for f in network.families.values()]
        (['y'], ['real'])
    """

    def __init__(
        self, config: NetworkConfig | None = None, embeddings: Mapping[str, nn.Module] | None = None
    ) -> None:
        super().__init__()
        config = config or NetworkConfig()
        if config.attention is None:
            config = replace(config, attention=False)
        self.config = config
        self.user_embeddings = dict(embeddings or {})
        c = self.config
        evidence = c.observation_size * (2 if c.attention else 1)
        input_size = evidence + c.address_size + INDEX_FEATURES + c.value_size
        self.core = nn.LSTMCell(input_size, c.hidden_size)
        self.attention = ObservationAttention(c.address_size) if c.attention else None
        self.context_bias = nn.Parameter(torch.zeros(c.observation_size))
        self.observation_embeddings = nn.ModuleDict()
        self.observation_projections = nn.ModuleDict()
        self.addresses = nn.ParameterDict()
        self.value_embeddings = nn.ModuleDict()
        self.heads = nn.ModuleDict()
        self.observations: dict[str, _ObservationSlot] = {}
        self.families: dict[str, Family] = {}
        self._observation_families: dict[str, str] = {}  # family name → its key
        self._by_lookup: dict[tuple[Any, ...], Family] = {}
        self._warned_variants: set[tuple[Any, ...]] = set()
        self._names: dict[str, tuple[str, int | None, Tensor]] = {}
        self._new_parameters: list[nn.Parameter] = []

    # -- construction ------------------------------------------------------------------

    @classmethod
    def from_traces(
        cls,
        traces: Iterable[Trace],
        config: NetworkConfig | None = None,
        embeddings: Mapping[str, nn.Module] | None = None,
    ) -> InferenceNetwork:
        """A network with modules for every site of some joint traces of the model;
        ``NetworkConfig(attention=None)`` is decided here (see :class:`NetworkConfig`)."""
        traces = list(traces)
        config = config or NetworkConfig()
        if config.attention is None:
            most = max((len(trace.names("observe")) for trace in traces), default=0)
            config = replace(config, attention=most >= ATTENTION_MIN_OBSERVATIONS)
        network = cls(config, embeddings)
        for trace in traces:
            network.register(trace)
        network.pop_new_parameters()
        return network

    def defensive(self, epsilon: float) -> DefensiveNetwork:
        """Deprecated: pass ``defensive=ε`` to ``CSIS.run`` (or use
        ``infcomp.inference.NetworkProposal(network, ε)``)."""
        warn_renamed("InferenceNetwork.defensive(ε)", "CSIS.run(..., defensive=ε)")
        return DefensiveNetwork(self, epsilon)

    def register(self, trace: Trace) -> None:
        """Create the modules for the observe sites and latent site families of a trace
        (values with ``trace.batch_ndim`` leading dimensions) that have none yet."""
        lead = trace.batch_ndim
        for name, site in trace.sites.items():
            if site.kind == "observe" and name not in self.observations:
                assert site.value is not None
                self._add_observation(name, tuple(site.value.shape[lead:]))
                embedding = self.observation_embeddings[self.observations[name].key]
                if isinstance(embedding, MLPEmbedding) and lead > 0:
                    embedding.fit(site.value.reshape((-1, *site.value.shape[lead:])))
            elif site.kind == "sample" and site.fn is not None:
                self._family(name, site.fn, lead, create=True)

    def _add_observation(self, name: str, shape: tuple[int, ...]) -> None:
        key = f"o{len(self.observations)}"
        embedding = self.user_embeddings.get(name) or MLPEmbedding(
            shape, self.config.observation_size
        )
        device = self.context_bias.device
        embedding.to(device=device, dtype=self.context_bias.dtype)
        with torch.no_grad():
            features = embedding(self.context_bias.new_zeros((2, *shape))).shape[-1]
        projection = nn.Linear(features, self.config.observation_size)
        self._adopt(key, embedding, self.observation_embeddings)
        self._adopt(key, projection, self.observation_projections)
        base, index = split_index(name)
        family = self._observation_families.setdefault(base, f"g{len(self._observation_families)}")
        if self.attention is not None and family not in self.attention.families:
            size = self.config.address_size
            address = nn.Parameter(self.context_bias.new_empty(size).normal_(std=0.1))
            self.attention.families[family] = address
            self._new_parameters.append(address)
        self.observations[name] = _ObservationSlot(key, shape, family, index_features(index))

    def _family(self, name: str, prior: Distribution, lead: int, create: bool) -> Family | None:
        base, _, _ = self._parse(name)
        natural = tuple(prior.batch_shape[lead:])
        lookup = (
            base,
            type(prior).__name__,
            natural,
            tuple(prior.event_shape),
            integer_range(prior),
        )
        family = self._by_lookup.get(lookup)
        if family is None and not create:
            self._warn_unseen_variant(name, lookup)
        if family is not None or not create:
            return family
        key = f"f{len(self.families)}"
        spec: HeadSpec | None = None
        if not ({name, base} & set(self.config.prior_sites)):
            try:
                skip = () if self.config.flows else (FlowHead.kind,)
                spec = head_spec(name, prior, self.config.max_categories, lead, skip)
            except UnsupportedSiteError:
                if UNSUPPORTED not in self.config.prior_sites:
                    raise
        self._build_family(Family(key, base, lookup, spec))
        return self.families[key]

    def _warn_unseen_variant(self, name: str, lookup: tuple[Any, ...]) -> None:
        """Warn (once per variant) that a latent site the network knows by name comes with
        another distribution type or shape than it was compiled on, and is proposed from
        its prior: the model is run with other arguments, say. A site never seen by name
        (a rare branch) is proposed from its prior without a warning."""
        known = [f.lookup for f in self.families.values() if f.base == lookup[0]]
        if not known or lookup in self._warned_variants:
            return
        self._warned_variants.add(lookup)

        def variant(entry: tuple[Any, ...]) -> str:
            return f"({entry[1]}, shape {(*entry[2], *entry[3])})"

        compiled = ", ".join(dict.fromkeys(variant(entry) for entry in known))
        warnings.warn(
            f"latent site {name!r} {variant(lookup)} is not what the inference network "
            f"was compiled on, {compiled}: it is proposed from its prior (are the "
            f"model's arguments those it was compiled with?)",
            InferenceWarning,
            stacklevel=user_stacklevel(),
        )

    def _build_family(self, family: Family) -> None:
        c = self.config
        self.families[family.key] = family
        self._by_lookup[family.lookup] = family
        address = nn.Parameter(self.context_bias.new_empty(c.address_size).normal_(std=0.1))
        self.addresses[family.key] = address
        self._new_parameters.append(address)
        if family.spec is not None:
            width = c.hidden_size + c.observation_size * (2 if c.attention else 1)
            self._adopt(family.key, make_head(family.spec, width, c.components), self.heads)
            features = head_class(family.spec.kind).value_feature_size(family.spec)
            self._adopt(family.key, nn.Linear(features, c.value_size), self.value_embeddings)

    def _adopt(self, key: str, module: nn.Module, into: nn.ModuleDict) -> None:
        module.to(device=self.context_bias.device, dtype=self.context_bias.dtype)
        into[key] = module
        self._new_parameters.extend(module.parameters())

    def pop_new_parameters(self) -> list[nn.Parameter]:
        """Parameters of modules created since the last call (to add to an optimizer)."""
        new, self._new_parameters = self._new_parameters, []
        return new

    def _parse(self, name: str) -> tuple[str, int | None, Tensor]:
        parsed = self._names.get(name)
        if parsed is None:
            base, index = split_index(name)
            parsed = (base, index, index_features(index))
            self._names[name] = parsed
        return parsed

    # -- the forward pass --------------------------------------------------------------

    def attention_weights(self, site: str, observations: Iterable[str]) -> Tensor:
        """The attention weights of latent site ``site`` over these observe sites, shape
        ``(n,)`` in their order (they sum to one; see :class:`ObservationAttention`).

        Raises:
            ValueError: the network has no attention, or an observe site is unknown to it.
        """
        if self.attention is None:
            raise ValueError("this network has no attention (NetworkConfig(attention=False))")
        names = list(observations)
        unknown = sorted(set(names) - set(self.observations))
        if unknown or not names:
            raise ValueError(
                f"observe sites {unknown or names} are not known to the network "
                f"(it knows {sorted(self.observations)})"
            )
        slots = [self.observations[name] for name in names]
        keys = self.attention.keys(
            [slot.family for slot in slots], torch.stack([slot.features for slot in slots])
        )
        base, _, features = self._parse(site)
        family = next((f for f in self.families.values() if f.base == base), None)
        address = (
            self.addresses[family.key]
            if family is not None
            else self.context_bias.new_zeros(self.config.address_size)
        )
        return self.attention.weights(keys, address, features)

    def context(self, observations: Mapping[str, Tensor], batch_ndim: int) -> Tensor:
        """The observation context, shape ``lead + (observation_size,)`` where ``lead`` is
        the leading ``batch_ndim`` dimensions of the values. Observe sites the network
        has no embedding for are ignored."""
        return self.evidence(observations, batch_ndim).context

    def evidence(self, observations: Mapping[str, Tensor], batch_ndim: int) -> Evidence:
        """The observations embedded for a run (see :class:`Evidence`): ``lead`` is the
        leading ``batch_ndim`` dimensions of the values. Observe sites the network has no
        embedding for are ignored.

        Raises:
            ModelError: the network knows none of the observe sites, or an observed
                value's shape (after the ``batch_ndim`` leading ones) is not the one the
                network was compiled on.
        """
        device = self.context_bias.device
        embedded: list[Tensor] = []
        present: list[_ObservationSlot] = []
        lead: torch.Size | None = None
        for name, slot in self.observations.items():
            if name not in observations:
                continue
            value = observations[name].to(device)
            if value.dim() < batch_ndim or value.shape[batch_ndim:] != slot.shape:
                batched = f" after the first {batch_ndim} dimension(s)" if batch_ndim else ""
                raise ModelError(
                    f"observe site {name!r}: the observed value has shape "
                    f"{tuple(value.shape)}, but the inference network was compiled on "
                    f"values of shape {tuple(slot.shape)}{batched}"
                )
            lead = value.shape[:batch_ndim]
            flat = value.reshape((-1, *slot.shape))
            embedded.append(
                self.observation_projections[slot.key](self.observation_embeddings[slot.key](flat))
            )
            present.append(slot)
        if lead is None:
            raise ModelError(
                f"none of the observations {sorted(observations)} is known to the network "
                f"(it knows {sorted(self.observations)})"
            )
        values = torch.stack(embedded, dim=-2)  # (rows, n, observation_size)
        context = torch.relu(values.sum(-2) + self.context_bias)
        keys = None
        if self.attention is not None:
            features = torch.stack([slot.features for slot in present])
            keys = self.attention.keys([slot.family for slot in present], features)
        width = (self.config.observation_size,)
        return Evidence(
            context.reshape(lead + width), values.reshape(lead + values.shape[-2:]), keys
        )

    def proposer(
        self,
        observations: Mapping[str, Tensor],
        batch_shape: tuple[int, ...],
        data_batch_ndim: int = 0,
        defensive: float = 0.0,
    ) -> NetworkProposer:
        """A proposer for one run with particle shape ``batch_shape``; the observations
        carry ``data_batch_ndim`` leading dimensions (which broadcast against it)."""
        evidence = self.evidence(observations, data_batch_ndim)
        return NetworkProposer(self, evidence, torch.Size(batch_shape), defensive, learn=False)

    def log_prob_trace(self, trace: Trace) -> Tensor:
        """``log q(x_i; y_i)`` for the joint traces of a group, shape ``(n,)``.

        Walks the latent sites of ``trace`` (values with one leading dimension n) in
        program order, scoring each value under its proposal (teacher forcing). Sites
        proposed from the prior contribute nothing (their log q does not depend on the
        network). Unknown sites are registered first.
        """
        if trace.batch_ndim != 1:
            raise ValueError("log_prob_trace needs a trace with one leading batch dimension")
        self.register(trace)
        observations = {n: s.value for n, s in trace.sites.items() if s.kind == "observe"}
        first = next(iter(trace.sites.values()))
        assert first.value is not None
        size = first.value.shape[0]
        evidence = self.evidence(observations, 1)  # type: ignore[arg-type]
        proposer = NetworkProposer(self, evidence, torch.Size([size]), 0.0, learn=True)
        total = evidence.context.new_zeros(size)
        for site in trace.sites.values():
            if site.kind != "sample":
                continue
            proposal = proposer.propose(site)
            if proposal is not None:
                assert site.value is not None
                total = total + sum_rightmost(proposal.log_prob(site.value), 1)
            proposer.accept(site)
        return total

    def log_prob_groups(self, traces: Sequence[Trace]) -> Tensor:
        """``log q(x_i; y_i)`` for the joint traces of many groups (one per structure),
        concatenated in the groups' order, shape ``(Σ n_g,)``.

        Groups with the same observe sites are scored together along the latent sites
        their runs share: all rows go through the network at once while the groups' next
        sites agree (the first attempts of a rejection loop, say), and the rows split
        where they differ, so a minibatch of many structures costs about as many network
        steps as its longest run, not the sum over structures. The arithmetic per row is
        :meth:`log_prob_trace`'s (each row's state depends on its own sites only).
        """
        for trace in traces:
            self.register(trace)
        scores: list[Tensor | None] = [None] * len(traces)
        together: dict[tuple[Any, ...], list[int]] = {}
        for index, trace in enumerate(traces):
            observed = tuple(
                (name, tuple(site.value.shape[1:]))  # type: ignore[union-attr]
                for name, site in trace.sites.items()
                if site.kind == "observe"
            )
            together.setdefault(observed, []).append(index)
        for indices in together.values():
            merged = None
            if len(indices) > 1:
                merged = self._log_prob_merged([traces[i] for i in indices])
            for position, index in enumerate(indices):
                scores[index] = (
                    merged[position] if merged is not None else self.log_prob_trace(traces[index])
                )
        return torch.cat(scores)  # type: ignore[arg-type]

    def _log_prob_merged(self, traces: list[Trace]) -> list[Tensor] | None:
        """:meth:`log_prob_groups` for groups with the same observe sites; None where
        the priors of a shared site cannot be concatenated (then group by group)."""
        sizes = [next(iter(trace.sites.values())).value.shape[0] for trace in traces]  # type: ignore[union-attr]
        observed = [name for name, site in traces[0].sites.items() if site.kind == "observe"]
        observations = {
            name: torch.cat([trace[name].value for trace in traces])  # type: ignore[misc]
            for name in observed
        }
        evidence = self.evidence(observations, 1)
        proposer = NetworkProposer(self, evidence, torch.Size([sum(sizes)]), 0.0, learn=True)
        latent = [
            [site for site in trace.sites.values() if site.kind == "sample"] for trace in traces
        ]
        totals: list[Tensor] = [evidence.context.new_zeros(size) for size in sizes]
        # Each entry: a proposer and the groups whose rows it holds, in order, with the
        # position of each group's next latent site.
        pending = [(proposer, list(range(len(traces))), 0)]
        while pending:
            proposer, members, position = pending.pop()
            while True:
                following: dict[str | None, list[int]] = {}
                for g in members:
                    name = latent[g][position].name if position < len(latent[g]) else None
                    following.setdefault(name, []).append(g)
                if len(following) > 1 or None in following:
                    start = {}
                    offset = 0
                    for g in members:
                        start[g] = offset
                        offset += sizes[g]
                    for name, part in following.items():
                        if name is None:
                            continue
                        rows = torch.cat(
                            [torch.arange(start[g], start[g] + sizes[g]) for g in part]
                        )
                        pending.append((proposer.select(rows), part, position))
                    break
                sites = [latent[g][position] for g in members]
                fn = (
                    sites[0].fn
                    if len(sites) == 1
                    else concatenate_distributions(
                        [site.fn for site in sites]  # type: ignore[misc]
                    )
                )
                if fn is None:
                    return None
                value = torch.cat([site.value for site in sites])  # type: ignore[misc]
                site = Site(sites[0].name, "sample", fn, value, sites[0].scale)
                proposal = proposer.propose(site)
                if proposal is not None:
                    scored = sum_rightmost(proposal.log_prob(value), 1).split(
                        [sizes[g] for g in members]
                    )
                    for g, part_score in zip(members, scored):
                        totals[g] = totals[g] + part_score
                proposer.accept(site)
                position += 1
        return totals

    def config_dict(self) -> dict[str, Any]:
        """What rebuilds this network's modules (with :meth:`from_config_dict`)."""
        return {
            "version": NETWORK_VERSION,
            "config": self.config.to_dict(),
            "observations": {name: list(slot.shape) for name, slot in self.observations.items()},
            # The observe sites embedded by the user's modules (by class name), which
            # loading needs again: the file holds their parameters, not their code.
            "embeddings": {
                name: type(self.user_embeddings[name]).__qualname__
                for name in self.observations
                if name in self.user_embeddings
            },
            "families": [
                {
                    "base": family.base,
                    "lookup": [
                        family.lookup[0],
                        family.lookup[1],
                        list(family.lookup[2]),
                        list(family.lookup[3]),
                        None if family.lookup[4] is None else list(family.lookup[4]),
                    ],
                    "spec": family.spec.to_dict() if family.spec is not None else None,
                }
                for family in self.families.values()
            ],
        }

    @classmethod
    def from_config_dict(
        cls, data: Mapping[str, Any], embeddings: Mapping[str, nn.Module] | None = None
    ) -> InferenceNetwork:
        """Rebuild a network (untrained) from :meth:`config_dict`; then load its state.

        Raises:
            ValueError: the config is of another architecture version than
                :data:`NETWORK_VERSION` (a network saved by an older infcomp: train anew).
        """
        mismatch = architecture_mismatch(data)
        if mismatch is not None:
            raise ValueError(mismatch)
        network = cls(NetworkConfig.from_dict(data["config"]), embeddings)
        for name, shape in data["observations"].items():
            network._add_observation(name, tuple(shape))
        for index, item in enumerate(data["families"]):
            base, distribution, natural, event, *bounds = item["lookup"]
            spec = HeadSpec.from_dict(item["spec"]) if item["spec"] is not None else None
            if bounds:
                bounded = None if bounds[0] is None else (float(bounds[0][0]), float(bounds[0][1]))
            else:  # saved before families were told apart by their integer range
                bounded = saved_integer_range(spec)
            lookup = (base, distribution, tuple(natural), tuple(event), bounded)
            network._build_family(Family(f"f{index}", item["base"], lookup, spec))
        network.pop_new_parameters()
        return network


def architecture_mismatch(data: Mapping[str, Any]) -> str | None:
    """Why a :meth:`InferenceNetwork.config_dict` cannot be rebuilt by this infcomp (its
    architecture version is not :data:`NETWORK_VERSION`), or None."""
    version = data.get("version", 1)
    if version == NETWORK_VERSION:
        return None
    return (
        f"the inference network has architecture version {version}; this infcomp builds "
        f"version {NETWORK_VERSION} (since 2: the heads read the observation context, "
        f"observations are standardized, vector sites get flows; since 3: interval sites "
        f"are proposed through the Normal CDF): compile the model anew"
    )


@dataclass(frozen=True)
class DefensiveNetwork:
    """Deprecated (see :meth:`InferenceNetwork.defensive`): an :class:`InferenceNetwork`
    whose proposals are mixed with the prior, ``q' = (1 - ε) q + ε p``."""

    network: InferenceNetwork
    epsilon: float

    def __post_init__(self) -> None:
        if not 0 < self.epsilon < 1:
            raise ValueError(f"the defensive weight must lie in (0, 1), got {self.epsilon}")


@functools.cache
def _gate_order(size: int) -> Tensor:
    """Row indices that reorder :class:`torch.nn.LSTMCell`'s gates (entry, forget,
    candidate, out) as (entry, forget, out, candidate)."""
    gate = torch.arange(size)
    return torch.cat([gate, gate + size, gate + 3 * size, gate + 2 * size])


class NetworkProposer:
    """The state of one run of an :class:`InferenceNetwork`: the LSTM's hidden and cell
    states and the previous value's embedding.

    Rows of the batch share their state until their values differ: at first there is
    one row per data set (the context's), broadcast over the particles, so the core runs
    on B rows rather than N × B until the first value proposed by the network is drawn.
    The attended evidence is always computed on the data's rows (its weights depend on
    the site only) and then broadcast; so is the core's product with the part of its input
    that is the same for all particles of a data set (:meth:`_step`).

    Implements :class:`~infcomp.handlers.Proposer`.
    """

    def __init__(
        self,
        network: InferenceNetwork,
        evidence: Evidence,
        batch_shape: torch.Size,
        defensive: float,
        learn: bool,
    ) -> None:
        c = network.config
        self.network = network
        self.batch_shape = batch_shape
        context = evidence.context
        # The state's leading shape: the context's, aligned to (and broadcastable to) the
        # batch shape; it grows to the full batch shape at the first accepted value.
        lead = context.shape[:-1]
        self.lead = torch.Size((1,) * (len(batch_shape) - len(lead)) + tuple(lead))
        self.data_lead = self.lead
        rows = max(self.lead.numel(), 1)
        self.data_context = context.reshape(rows, -1)
        self.values = evidence.values.reshape((rows, *evidence.values.shape[-2:]))
        self.keys = evidence.keys
        self.hidden = context.new_zeros(rows, c.hidden_size)
        self.cell = context.new_zeros(rows, c.hidden_size)
        self.previous = context.new_zeros(rows, c.value_size)
        self.defensive = defensive
        self.learn = learn
        self._family: Family | None = None
        self._pending: tuple[Family, Tensor] | None = None

    def propose(self, site: Site) -> Distribution | None:
        """Advance the core to ``site`` and return its proposal (None: the prior)."""
        self._embed_pending()
        network = self.network
        prior = site.fn
        assert prior is not None
        lead = len(self.batch_shape)
        if prior.batch_shape[:lead] != self.batch_shape:
            prior = prior.expand(self.batch_shape + prior.batch_shape)
        family = network._family(site.name, prior, lead, create=self.learn)
        self._family = family
        _, _, features = network._parse(site.name)
        if family is None:
            address = self.data_context.new_zeros(network.config.address_size)
        else:
            address = network.addresses[family.key]
        evidence = [self.data_context]
        if self.keys is not None:
            evidence.append(self._attend(address, features))
        data_rows = self.data_context.shape[0]
        shared = torch.cat(
            [*evidence, address.expand(data_rows, -1), features.to(address).expand(data_rows, -1)],
            dim=-1,
        )
        self.hidden, self.cell = self._step(shared)
        if family is None or family.spec is None:
            return None
        shared_readout = torch.cat(evidence, dim=-1).reshape(self.data_lead + (-1,))
        readout = Readout(self.hidden.reshape(self.lead + (-1,)), shared_readout)
        proposal = network.heads[family.key](readout, prior)
        if self.defensive > 0:
            proposal = DefensiveMixture(proposal, prior, self.defensive)
        return proposal

    def _attend(self, address: Tensor, features: Tensor) -> Tensor:
        """The attended evidence of a latent site on the data's rows,
        ``(data rows, observation_size)``."""
        assert self.keys is not None and self.network.attention is not None
        weights = self.network.attention.weights(self.keys, address, features)
        return torch.einsum("rnd,n->rd", self.values, weights)

    def _step(self, shared: Tensor) -> tuple[Tensor, Tensor]:
        """The core's next (hidden, cell) state: :class:`torch.nn.LSTMCell`'s arithmetic
        with its parameters, the input's part that is the same for every particle of a
        data set (``shared``: evidence, address, index features; on the data's rows)
        multiplied once per data set and broadcast, the rest (the previous value's
        embedding, the hidden state) per row: for N particles of B data sets, a
        ``4H × (value_size + H)`` product per particle instead of ``4H × (input + H)``.
        Many rows go through in chunks of about :data:`CHUNK_ROWS` along the leading
        dimension, so that the gates' elementwise arithmetic stays in the CPU's caches.
        """
        core = self.network.core
        size = core.hidden_size
        order = _gate_order(size)  # (entry, forget, out, candidate): one sigmoid for three
        split = shared.shape[-1]
        weight = torch.cat([core.weight_ih[order, split:], core.weight_hh[order]], dim=-1)
        lead = self.lead or torch.Size((1,))
        data_lead = self.data_lead or torch.Size((1,))
        bias = (core.bias_ih + core.bias_hh)[order]
        common = nn.functional.linear(shared, core.weight_ih[order, :split], bias)
        common = common.reshape(data_lead + (-1,))
        one_row = data_lead.numel() == 1  # the same input part for all: the product's bias
        previous, hidden = (t.reshape(lead + (-1,)) for t in (self.previous, self.hidden))
        cell = self.cell.reshape(lead + (-1,))
        step = max(1, CHUNK_ROWS // max(lead[1:].numel(), 1))
        hiddens, cells = [], []
        for start in range(0, lead[0], step):
            part = slice(start, start + step)
            own = torch.cat([previous[part], hidden[part]], dim=-1)
            if one_row:
                gates = nn.functional.linear(own, weight, common.reshape(-1))
            else:
                gates = nn.functional.linear(own, weight) + (
                    common if data_lead[0] == 1 else common[part]
                )
            sigmoids = torch.sigmoid(gates[..., : 3 * size])
            entry, forget, out = sigmoids.chunk(3, dim=-1)
            new_cell = torch.addcmul(forget * cell[part], entry, torch.tanh(gates[..., 3 * size :]))
            hiddens.append(out * torch.tanh(new_cell))
            cells.append(new_cell)
        rows = self.hidden.shape[0]
        return torch.cat(hiddens).reshape(rows, -1), torch.cat(cells).reshape(rows, -1)

    def accept(self, site: Site) -> None:
        """Remember the value chosen at ``site``; it is embedded at the next step only
        (after a run's last site it never is)."""
        family = self._family
        if family is None or family.spec is None:
            self._pending = None
            self.previous = self.previous.new_zeros(self.previous.shape)
            return
        assert site.value is not None
        self._pending = (family, site.value)

    def reindex(self, index: Tensor) -> None:
        """Resample the particles' states (sequential Monte Carlo): particle n of data set
        b takes the state of particle ``index[n, b]`` (``index[n]`` with one data set).
        Rows still shared by all particles (before the first value) stay as they are."""
        if self.lead != self.batch_shape:
            return
        if index.dim() == 1:
            rows = index
        else:  # (N, B) particles are rows n * B + b
            width = index.shape[1]
            rows = (index * width + torch.arange(width, device=index.device)).reshape(-1)
        self.hidden, self.cell, self.previous = (
            t[rows] for t in (self.hidden, self.cell, self.previous)
        )

    def select(self, rows: Tensor) -> NetworkProposer:
        """A proposer for ``rows`` of this one's (one leading batch dimension, every row
        its own data, as in training), with their states."""
        assert len(self.batch_shape) == 1 and self.data_lead == self.batch_shape
        chosen = copy.copy(self)
        chosen.batch_shape = chosen.lead = chosen.data_lead = torch.Size([len(rows)])
        chosen.data_context, chosen.values = self.data_context[rows], self.values[rows]
        chosen.hidden, chosen.cell = self.hidden[rows], self.cell[rows]
        chosen.previous = self.previous[rows]
        if self._pending is not None:
            chosen._pending = (self._pending[0], self._pending[1][rows])
        return chosen

    def _embed_pending(self) -> None:
        if self._pending is None:
            return
        family, value = self._pending
        self._pending = None
        assert family.spec is not None
        if self.lead != self.batch_shape:
            # The rows' values now differ: give every row its own state from here on.
            rows = max(self.batch_shape.numel(), 1)
            self.hidden, self.cell = (
                t.reshape(self.lead + t.shape[-1:])
                .expand(self.batch_shape + t.shape[-1:])
                .reshape(rows, -1)
                for t in (self.hidden, self.cell)
            )
            self.lead = self.batch_shape
        rows = self.hidden.shape[0]
        head = head_class(family.spec.kind)
        features = head.value_features(family.spec, value, rows).to(self.hidden)
        self.previous = self.network.value_embeddings[family.key](features)
