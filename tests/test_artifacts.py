"""Saved CSIS artifacts are checked against the model, their checksums and their sizes.

Each case saves an artifact for a base model and loads it for a changed one, by both
loader paths (the automatic network rebuilt from its config, and a user-written guide),
and checks that the error names every difference the change makes.
"""

import errno
import io
import os
import re

import pytest
import torch
from torch import nn
from torch.distributions import Gamma, Normal

import infcomp as ic
from infcomp.inference import artifacts
from infcomp.inference.artifacts import (
    FREQUENT,
    PROBE_SIZE,
    Signature,
    SiteRecord,
    checksums,
    signature_differences,
)
from infcomp.nn import InferenceNetwork

pytestmark = pytest.mark.filterwarnings("ignore::infcomp.VectorizationNotice")

SCALAR = Normal(0.0, 1.0)


def program(latents=(("z", SCALAR), ("s", SCALAR)), observes=(("y", ()), ("w", ()))):
    """A model with the given latent sites (name, prior) and observe sites (name, shape):
    each observation is Normal around the sum of the latents."""

    def model():
        total = torch.tensor(0.0)
        for name, prior in latents:
            value = ic.sample(name, prior)
            total = total + (value if value.shape[-1:] != (3,) else value.sum(-1))
        for name, shape in observes:
            loc = total if shape == () else total[..., None].expand(*total.shape, *shape)
            ic.observe(name, Normal(loc, 1.0))

    return model


BASE = program()


class Guide(nn.Module):
    """A user-written guide for BASE (never run here: only saved and loaded)."""

    def __init__(self):
        super().__init__()
        self.loc = nn.Parameter(torch.zeros(2))

    def forward(self, observations=None):
        ic.sample("z", Normal(self.loc[0], 1.0))
        ic.sample("s", Normal(self.loc[1], 1.0))


def save_base(tmp_path, path_kind, **options):
    guide = Guide() if path_kind == "guide" else None
    csis = ic.CSIS(BASE, guide, validation_size=0, **options)
    path = tmp_path / "base.pt"
    csis.save(path)
    return csis, path


def load(path, model, path_kind, **options):
    guide = Guide() if path_kind == "guide" else None
    return ic.CSIS.load(path, model, guide, validation_size=0, **options)


# Each change of BASE and the differences it must name (derived from the change: the
# sites that are gone, new, or of another type or shape).
CHANGES = {
    "renamed latent": (
        program(latents=(("z", SCALAR), ("t", SCALAR))),
        [
            "latent site 's' (Normal, shape ()) is in the artifact but the model no longer makes it",
            "the model's latent site 't' (Normal, shape ()) is not in the artifact",
        ],
    ),
    "added latent": (
        program(latents=(("z", SCALAR), ("s", SCALAR), ("u", SCALAR))),
        ["the model's latent site 'u' (Normal, shape ()) is not in the artifact"],
    ),
    "removed latent": (
        program(latents=(("z", SCALAR),)),
        ["latent site 's' (Normal, shape ()) is in the artifact but the model no longer makes it"],
    ),
    "renamed observation": (
        program(observes=(("y", ()), ("v", ()))),
        [
            "observe site 'w' (Normal, shape ()) is in the artifact but the model no longer makes it",
            "the model's observe site 'v' (Normal, shape ()) is not in the artifact",
        ],
    ),
    "added observation": (
        program(observes=(("y", ()), ("w", ()), ("v", ()))),
        ["the model's observe site 'v' (Normal, shape ()) is not in the artifact"],
    ),
    "removed observation": (
        program(observes=(("y", ()),)),
        ["observe site 'w' (Normal, shape ()) is in the artifact but the model no longer makes it"],
    ),
    "changed latent shape": (
        program(latents=(("z", SCALAR), ("s", Normal(torch.zeros(3), 1.0)))),
        [
            "latent site 's': the artifact has Normal, shape (), the model now makes Normal, shape (3,)"
        ],
    ),
    "changed observation shape": (
        program(observes=(("y", ()), ("w", (2,)))),
        [
            "observe site 'w': the artifact has Normal, shape (), the model now makes Normal, shape (2,)"
        ],
    ),
    "changed distribution": (
        program(latents=(("z", SCALAR), ("s", Gamma(2.0, 1.0)))),
        ["latent site 's': the artifact has Normal, shape (), the model now makes Gamma, shape ()"],
    ),
}


@pytest.mark.parametrize("path_kind", ["network", "guide"])
def test_a_changed_model_is_refused_naming_each_difference(tmp_path, path_kind):
    _, path = save_base(tmp_path, path_kind)
    assert load(path, BASE, path_kind).num_steps == 0  # the unchanged model loads
    for change, (model, differences) in CHANGES.items():
        with pytest.raises(ic.ArtifactError) as caught:
            load(path, model, path_kind)
        message = str(caught.value)
        assert "does not fit the model" in message and "strict=False" in message, change
        listed = [line[4:] for line in message.splitlines() if line.startswith("  - ")]
        assert len(listed) == len(differences), (change, message)
        for difference, line in zip(differences, listed):
            assert line.startswith(difference), (change, line)
        # strict=False accepts the partial match, with the same list as a warning.
        with pytest.warns(ic.ArtifactWarning, match=re.escape(differences[0])):
            load(path, model, path_kind, strict=False)


def test_a_renamed_latent_with_strict_false_is_proposed_from_its_prior(tmp_path):
    """The network has no head for the renamed site, so it is proposed from its prior:
    every log weight is then exactly log p(y | x) (likelihood weighting)."""
    one = program(latents=(("z", SCALAR),), observes=(("y", ()),))
    csis = ic.CSIS(one, validation_size=0)
    path = tmp_path / "one.pt"
    csis.save(path)
    renamed = program(latents=(("mu", SCALAR),), observes=(("y", ()),))
    with pytest.warns(ic.ArtifactWarning, match="'mu'"):
        loaded = ic.CSIS.load(path, renamed, validation_size=0, strict=False)
    post = loaded.run({"y": 1.5}, num_particles=100)
    expected = Normal(post.values("mu"), 1.0).log_prob(torch.tensor(1.5)).double()
    assert torch.allclose(post.log_weights.double(), expected, atol=1e-5)


def stochastic(rename_branch=None, rename_loop=None):
    """A model whose structure varies: a branch taken in half of the runs, a loop of
    Poisson(2) + 1 steps (sites x_0, x_1, ...); optionally with a site renamed."""

    def model():
        z = ic.sample("z", SCALAR)
        if ic.sample("coin", torch.distributions.Bernoulli(0.5)) > 0:
            z = z + ic.sample(rename_branch or "branch", SCALAR)
        steps = int(ic.sample("steps", torch.distributions.Poisson(2.0))) + 1
        for t in range(steps):
            z = z + ic.sample(f"{rename_loop or 'x'}_{t}", SCALAR)
        ic.observe("y", Normal(z, 1.0))

    return model


def test_sites_in_some_runs_only_are_compared_without_false_alarms(tmp_path):
    csis = ic.CSIS(stochastic(), validation_size=0, vectorize=False)
    path = tmp_path / "stochastic.pt"
    csis.save(path)
    ic.CSIS.load(path, stochastic(), validation_size=0, vectorize=False)
    # The branch (half of the runs) and the loop family are frequent enough to compare.
    for renamed, old, new in [
        (stochastic(rename_branch="other"), "'branch'", "'other'"),
        (stochastic(rename_loop="step"), "family 'x' (e.g. 'x_0')", "family 'step'"),
    ]:
        with pytest.raises(ic.ArtifactError) as caught:
            ic.CSIS.load(path, renamed, validation_size=0, vectorize=False)
        assert f"latent site {old} (Normal, shape ())" in str(caught.value)
        assert f"the model's latent site {new}" in str(caught.value)


def test_the_rule_for_sites_one_probe_missed():
    """A site found by one probe only is a difference when it occurred in at least a
    quarter of that probe's runs: for an unchanged model, the other probe misses such a
    site with probability at most 0.75^64."""
    threshold = int(FREQUENT * PROBE_SIZE)
    assert 0.75**PROBE_SIZE < 1.01e-8

    def signature(*records):
        return Signature(PROBE_SIZE, tuple(records))

    z = SiteRecord("sample", "z", "Normal", (), "z", PROBE_SIZE)
    for runs, reported in [(threshold - 1, False), (threshold, True)]:
        rare = SiteRecord("sample", "b", "Normal", (), "b", runs)
        assert bool(signature_differences(signature(z, rare), signature(z))) == reported
        assert bool(signature_differences(signature(z), signature(z, rare))) == reported
    # A rare variant of a family both probes saw is no difference either.
    gamma = SiteRecord("sample", "z", "Gamma", (), "z", threshold - 1)
    assert signature_differences(signature(z), signature(z, gamma)) == []


# -- embeddings ----------------------------------------------------------------------------


class Embedding(nn.Module):
    def __init__(self):
        super().__init__()
        self.linear = nn.Linear(1, 5)

    def forward(self, values):
        return self.linear(values.reshape(-1, 1))


def test_custom_embeddings_must_be_given_again(tmp_path):
    _, path = save_base(tmp_path, "network", observation_embeddings={"y": Embedding()})
    with pytest.raises(
        ic.ArtifactError, match=re.escape("observation_embeddings={'y': Embedding(...)}")
    ):
        load(path, BASE, "network")
    with pytest.raises(ic.ArtifactError, match=r"\['w'\] were saved with the default embedding"):
        load(path, BASE, "network", observation_embeddings={"y": Embedding(), "w": Embedding()})
    with pytest.raises(ic.ArtifactError, match=r"names \['nope'\], not observe sites"):
        load(path, BASE, "network", observation_embeddings={"nope": Embedding()})
    loaded = load(path, BASE, "network", observation_embeddings={"y": Embedding()})
    assert isinstance(loaded.network.observation_embeddings["o0"], Embedding)


# -- corruption ----------------------------------------------------------------------------


def test_flipped_bytes_inside_a_tensor_are_detected(tmp_path):
    csis, path = save_base(tmp_path, "network")
    weight = csis.network.core.weight_ih.detach()
    data = bytearray(path.read_bytes())
    start = data.find(weight.numpy().tobytes())
    assert start > 0
    for offset in range(64):
        data[start + 16 * offset] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(ic.ArtifactError, match=re.escape("part(s) ['guide'] do not match")):
        load(path, BASE, "network")


def test_truncated_and_foreign_files_are_refused(tmp_path):
    _, path = save_base(tmp_path, "network")
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(ic.ArtifactError, match="cannot be read"):
        load(path, BASE, "network")
    path.write_bytes(b"not a zip file at all")
    with pytest.raises(ic.ArtifactError, match="cannot be read"):
        load(path, BASE, "network")


def test_file_objects_work_too(tmp_path):
    csis, _ = save_base(tmp_path, "network")
    buffer = io.BytesIO()
    csis.save(buffer)
    buffer.seek(0)
    assert load(buffer, BASE, "network").num_steps == 0
    data = bytearray(buffer.getvalue())
    data[data.find(csis.network.core.weight_hh.detach().numpy().tobytes())] ^= 0xFF
    with pytest.raises(
        ic.ArtifactError, match=re.escape("the artifact is corrupt: its part(s) ['guide']")
    ):
        load(io.BytesIO(bytes(data)), BASE, "network")


def rewrite(path, change, version=2):
    """Change a saved payload and write it back with valid checksums (as a file saved
    by another program would be)."""
    saved = torch.load(path, weights_only=True)
    saved.pop("checksums")
    change(saved)
    saved["format_version"] = version
    if version == 2:
        saved["checksums"] = checksums(saved)
    torch.save(saved, path)


@pytest.mark.parametrize("path_kind", ["network", "guide"])
def test_nan_parameters_are_neither_saved_nor_loaded(tmp_path, path_kind):
    csis, path = save_base(tmp_path, path_kind)
    before = path.read_bytes()
    key = "core.bias_ih" if path_kind == "network" else "loc"
    with torch.no_grad():
        csis.guide.get_parameter(key)[1] = float("nan")
    with pytest.raises(ic.ArtifactError, match=f"not saved to .*'{key}' hold NaN"):
        csis.save(path)
    assert path.read_bytes() == before

    def poison(saved):
        saved["guide"][key][0] = float("nan")

    rewrite(path, poison)
    with pytest.raises(ic.ArtifactError, match=f"'{key}' hold NaN"):
        load(path, BASE, path_kind)


def test_a_failed_write_keeps_the_previous_file(tmp_path, monkeypatch):
    csis, path = save_base(tmp_path, "network")
    before = path.read_bytes()

    def disk_full(payload, file):
        file.write(b"partial")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(artifacts.torch, "save", disk_full)
    with pytest.raises(OSError, match="No space left"):
        csis.save(path)
    assert path.read_bytes() == before
    assert os.listdir(tmp_path) == ["base.pt"]  # no temporary file left behind
    monkeypatch.undo()
    umask = os.umask(0)
    os.umask(umask)
    csis.save(tmp_path / "new.pt")
    assert os.stat(tmp_path / "new.pt").st_mode & 0o777 == 0o666 & ~umask
    # Saved through a symbolic link, the file it names is replaced and the link kept.
    (tmp_path / "link.pt").symlink_to(tmp_path / "new.pt")
    csis.step(batch_size=4)
    csis.save(tmp_path / "link.pt")
    assert (tmp_path / "link.pt").is_symlink()
    assert load(tmp_path / "new.pt", BASE, "network").num_steps == 1


def test_version_1_files_load_unverified_with_a_warning(tmp_path):
    _, path = save_base(tmp_path, "network", observation_embeddings={"y": Embedding()})

    def as_version_1(saved):
        saved.pop("signature")
        saved["config"]["network"].pop("embeddings")

    rewrite(path, as_version_1, version=1)
    # Without the record of embeddings, the shapes' check names the observe site.
    with (
        pytest.warns(ic.ArtifactWarning),
        pytest.raises(
            ic.ArtifactError,
            match=r"observation_embeddings\.o0\.linear\.weight \(observe site 'y'\) is unexpected",
        ),
    ):
        load(path, BASE, "network")
    csis, path = save_base(tmp_path, "network")

    def as_version_1(saved):
        saved.pop("signature")
        saved["config"]["network"].pop("embeddings")

    rewrite(path, as_version_1, version=1)
    with pytest.warns(ic.ArtifactWarning, match="format version 1, which has no checksums"):
        loaded = load(path, BASE, "network")
    for (name, a), b in zip(
        csis.network.state_dict().items(), loaded.network.state_dict().values()
    ):
        assert torch.equal(a, b), name


def test_networks_of_an_older_architecture_are_refused_by_version(tmp_path):
    # Automatic networks saved before the heads read the observation context (no
    # "version" in their config) cannot be rebuilt: the error says so, not "malformed".
    _, path = save_base(tmp_path, "network")

    def as_architecture_1(saved):
        del saved["config"]["network"]["version"]
        del saved["config"]["network"]["config"]["flows"]

    rewrite(path, as_architecture_1)
    with pytest.raises(ic.ArtifactError, match="architecture version 1.*compile the model anew"):
        load(path, BASE, "network")


def test_networks_saved_before_the_attention_option_load_as_without_it(tmp_path):
    csis, path = save_base(tmp_path, "network")

    def without_attention_option(saved):
        del saved["config"]["network"]["config"]["attention"]

    rewrite(path, without_attention_option)
    loaded = load(path, BASE, "network")
    assert loaded.network.attention is None
    for (name, a), b in zip(
        csis.network.state_dict().items(), loaded.network.state_dict().values()
    ):
        assert torch.equal(a, b), name

    def attention_not_a_bool(saved):
        saved["config"]["network"]["config"]["attention"] = "yes"

    rewrite(path, attention_not_a_bool)
    with pytest.raises(ic.ArtifactError, match="asks for attention='yes'"):
        load(path, BASE, "network")


# -- untrusted sizes -----------------------------------------------------------------------


def test_config_sizes_are_checked_before_the_network_is_built(tmp_path, monkeypatch):
    csis, path = save_base(tmp_path, "network")
    c = csis.network.config
    width = c.observation_size + c.address_size + 8 + c.value_size  # the core's input

    def with_hidden_size(size):
        def change(saved):
            saved["config"]["network"]["config"]["hidden_size"] = size

        return change

    built_on = []
    original = InferenceNetwork.__init__

    def recording(self, *args, **kwargs):
        built_on.append(torch.empty(0).device.type)
        original(self, *args, **kwargs)

    monkeypatch.setattr(InferenceNetwork, "__init__", recording)
    rewrite(path, with_hidden_size(9000))
    expected = (
        f"core.weight_ih has shape ({4 * c.hidden_size}, {width}), expected ({4 * 9000}, {width})"
    )
    with pytest.raises(ic.ArtifactError, match=re.escape(expected)):
        load(path, BASE, "network")
    assert built_on == ["meta"]  # only the blueprint, which allocates nothing
    rewrite(path, with_hidden_size(10**9))
    with pytest.raises(
        ic.ArtifactError,
        match="hidden_size=1000000000; a saved network may have sizes from 1 to 65536",
    ):
        load(path, BASE, "network")

    def huge_observation(saved):
        saved["config"]["network"]["config"]["hidden_size"] = c.hidden_size
        saved["config"]["network"]["observations"]["y"] = [10**5, 10**5]

    rewrite(path, huge_observation)
    with pytest.raises(
        ic.ArtifactError, match=r"observe site 'y' the shape \(100000, 100000\), more than"
    ):
        load(path, BASE, "network")
    assert built_on == ["meta"]


def test_optimizer_state_must_fit_its_parameters(tmp_path):
    csis = ic.CSIS(BASE, Guide(), validation_size=0)
    csis.step(batch_size=4)
    path = tmp_path / "trained.pt"
    csis.save(path)

    def widen(saved):
        saved["optimizer"]["state"][0]["exp_avg"] = torch.zeros(5)

    rewrite(path, widen)
    with pytest.raises(
        ic.ArtifactError, match=r"'exp_avg' of parameter 0 has shape \(5,\), expected \(2,\)"
    ):
        load(path, BASE, "guide")


def test_stored_shapes_are_named_by_their_site(tmp_path):
    _, path = save_base(tmp_path, "network")

    def shrink(saved):
        for key in list(saved["guide"]):
            if key.startswith("heads.f1."):
                saved["guide"][key] = saved["guide"][key][..., :1]

    rewrite(path, shrink)
    with pytest.raises(ic.ArtifactError, match=r"heads\.f1\.\S+ \(latent family 's'\) has shape"):
        load(path, BASE, "network")


def test_the_blueprint_matches_the_network_for_every_head(tmp_path):
    """The shapes checked on the meta device are those the real network has."""
    from infcomp.nn.heads import HEADS

    priors = [prior for head in HEADS for prior in head.examples()]

    def model():
        for index, prior in enumerate(priors):
            ic.sample(f"site{chr(97 + index)}", prior)
        ic.observe("y", Normal(0.0, 1.0))

    network = ic.CSIS(model, validation_size=0, vectorize=False).network
    with torch.device("meta"):
        blueprint = InferenceNetwork.from_config_dict(network.config_dict())
    real = {k: v.shape for k, v in network.state_dict().items()}
    assert {k: v.shape for k, v in blueprint.state_dict().items()} == real


def test_loading_leaves_the_random_stream_as_it_was(tmp_path):
    """Building the network and probing the model draw nothing from the user's stream."""
    _, path = save_base(tmp_path, "network")
    torch.manual_seed(3)
    expected = torch.rand(3)
    torch.manual_seed(3)
    load(path, BASE, "network")
    assert torch.equal(torch.rand(3), expected)
