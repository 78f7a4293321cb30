import pytest
import torch
from torch.distributions import Normal

import infcomp as ic
from infcomp.runtime import Messenger, Site, Trace, apply_stack, sum_rightmost


class Recorder(Messenger):
    def __init__(self, label: str, log: list[str]) -> None:
        super().__init__()
        self.label = label
        self.log = log

    def process_message(self, site: Site) -> None:
        self.log.append(f"process {self.label}")

    def postprocess_message(self, site: Site) -> None:
        self.log.append(f"postprocess {self.label}")


def test_handlers_process_innermost_first_and_postprocess_outermost_first_as_minipyro():
    log: list[str] = []
    with Recorder("outer", log), Recorder("middle", log), Recorder("inner", log):
        apply_stack(Site("z", "sample", Normal(0.0, 1.0)))
    assert log == [
        "process inner",
        "process middle",
        "process outer",
        "postprocess outer",
        "postprocess middle",
        "postprocess inner",
    ]


def test_handlers_written_with_the_old_method_names_still_work_and_warn():
    log: list[str] = []
    with pytest.warns(DeprecationWarning, match="process_message"):

        class Old(Messenger):
            def process(self, site: Site) -> None:
                log.append("process")

            def postprocess(self, site: Site) -> None:
                log.append("postprocess")

    with Old():
        apply_stack(Site("z", "sample", Normal(0.0, 1.0)))
    assert log == ["process", "postprocess"]


def test_a_stopped_site_is_hidden_from_outer_handlers():
    log: list[str] = []
    with Recorder("outer", log), ic.block(), Recorder("inner", log):
        apply_stack(Site("z", "sample", Normal(0.0, 1.0)))
    assert log == ["process inner", "postprocess inner"]


def test_a_value_set_by_a_handler_is_not_resampled():
    class Fix(Messenger):
        def process_message(self, site: Site) -> None:
            site.value = torch.tensor(3.0)

    with Fix():
        site = apply_stack(Site("z", "sample", Normal(0.0, 1.0)))
    assert site.value == 3.0


def test_the_stack_is_cleaned_up_when_the_program_raises():
    from infcomp import runtime

    with pytest.raises(RuntimeError, match="boom"), ic.trace():
        raise RuntimeError("boom")
    assert runtime._STACK.get() == ()


def test_site_log_prob_scales_and_names_the_site_on_error():
    site = Site("z", "sample", Normal(0.0, 1.0), torch.tensor(0.5), scale=2.0)
    assert torch.allclose(site.log_prob(), 2 * Normal(0.0, 1.0).log_prob(torch.tensor(0.5)))
    factor = Site("f", "factor", None, torch.tensor(-1.5))
    assert factor.log_prob() == -1.5
    bad = Site("y", "observe", torch.distributions.Poisson(2.0), torch.tensor(-1.0))
    with pytest.raises(ic.ModelError, match="'y'"):
        bad.log_prob()


def test_trace_rejects_duplicate_names_and_sums_log_densities_per_particle():
    trace = Trace(batch_ndim=1)
    z = torch.tensor([0.0, 1.0])
    trace.add(Site("z", "sample", Normal(torch.zeros(2), 1.0), z))
    x = torch.zeros(2, 3)
    trace.add(Site("x", "observe", Normal(z.unsqueeze(-1).expand(2, 3), 1.0), x))
    with pytest.raises(ic.ModelError, match="'z' is used twice"):
        trace.add(Site("z", "sample", Normal(0.0, 1.0), torch.tensor(0.0)))
    expected_x = Normal(z.unsqueeze(-1), 1.0).log_prob(x).sum(-1).double()
    assert torch.allclose(trace.log_prob_sum(("observe",)), expected_x)
    expected = expected_x + Normal(0.0, 1.0).log_prob(z).double()
    assert torch.allclose(trace.log_prob_sum(), expected)
    assert trace.names("sample") == ["z"]
    with pytest.raises(KeyError, match="no site 'w'"):
        trace["w"]


def test_sum_rightmost_keeps_leading_dimensions():
    value = torch.ones(2, 3, 4)
    assert sum_rightmost(value, 1).shape == (2,)
    assert torch.equal(sum_rightmost(value, 1), torch.full((2,), 12.0))
    assert sum_rightmost(torch.tensor(1.0), 1).shape == ()


def test_old_style_subclasses_of_library_handlers_can_call_super():
    with pytest.warns(DeprecationWarning):

        class OldTrace(ic.trace):
            def postprocess(self, site: Site) -> None:
                super().postprocess(site)

    with OldTrace() as tracer:
        apply_stack(Site("z", "sample", Normal(0.0, 1.0)))
    assert list(tracer.trace) == ["z"]


def test_each_thread_has_its_own_handler_stack():
    import threading

    inside, done = threading.Event(), threading.Event()
    recorded = {}

    def holder():
        with ic.trace() as tracer:
            inside.set()
            done.wait(10)
        recorded["holder"] = list(tracer.trace)

    thread = threading.Thread(target=holder)
    thread.start()
    inside.wait(10)
    with ic.trace() as tracer:
        ic.sample("mine", Normal(0.0, 1.0))
    done.set()
    thread.join()
    assert list(tracer.trace) == ["mine"] and recorded["holder"] == []


def test_concurrent_inference_in_threads_gives_each_its_own_answer():
    from concurrent.futures import ThreadPoolExecutor

    from infcomp.examples.gaussian import exact_log_evidence, gaussian

    def run(x):
        torch.manual_seed(0)
        post = ic.importance(gaussian, {"x1": x, "x2": x}, 2000, vectorize=False)
        return float(post.log_evidence), float(post.log_evidence_stderr)

    with ThreadPoolExecutor(2) as pool:
        results = list(pool.map(run, [0.0, 3.0, 0.0, 3.0]))
    for x, (log_evidence, stderr) in zip([0.0, 3.0, 0.0, 3.0], results):
        assert abs(log_evidence - exact_log_evidence(x, x)) < 4 * stderr + 1e-3


def test_two_threads_running_inference_1000_times_each_match_serial_runs():
    # Deterministic weights (the latents have one possible value each), so that the
    # threads' shared random stream cannot make the answers differ: only a mix-up of
    # their handler stacks (a site or a likelihood of the other thread's model) can.
    from concurrent.futures import ThreadPoolExecutor

    from torch.distributions import Binomial, Categorical

    def first(shift):
        k = ic.sample("k", Categorical(probs=torch.tensor([0.0, 1.0])))
        ic.observe("y", Normal(k + shift, 1.0))

    def second(count):
        n = ic.sample("n", Binomial(count, probs=torch.tensor(1.0)))
        m = ic.sample("m", Binomial(count, probs=torch.tensor(0.0)))
        ic.observe("w", Normal(n - m, 2.0))

    jobs = [
        (first, {"y": 0.5}, (float(i % 7),)) if i % 2 == 0 else (second, {"w": 1.0}, (i % 5,))
        for i in range(2000)
    ]

    def run(job):
        model, data, args = job
        post = ic.importance(model, data, 8, args=args)
        site = "k" if model is first else "n"
        return post.log_weights.tolist(), post.values(site).tolist()

    serial = [run(job) for job in jobs]
    with ThreadPoolExecutor(2) as pool:
        threaded = list(pool.map(run, jobs))
    assert threaded == serial


def test_generator_and_async_functions_are_refused():
    def generator():
        yield ic.sample("z", Normal(0.0, 1.0))

    async def coroutine():
        ic.sample("z", Normal(0.0, 1.0))

    for model, kind in ((generator, "generator"), (coroutine, "coroutine")):
        with pytest.raises(ic.ModelError, match=kind):
            ic.importance(model, {}, 10)
