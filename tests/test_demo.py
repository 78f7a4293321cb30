import pytest
import torch

from infcomp import demo


def test_the_demo_prints_estimates_next_to_the_exact_answer_and_writes_the_figure(capsys, tmp_path):
    figure = tmp_path / "figure.png"
    demo.main(["--num-particles", "50", "20000", "--compile-steps", "100", "--figure", str(figure)])
    out = capsys.readouterr().out
    assert "prior IS, N = 50" in out and "prior IS, N = 20,000" in out
    assert "CSIS, N = 50" in out and "2. Compiled inference: 100 steps, batch 10" in out
    assert out.count("7.2500") == 2 and out.count("-8.2394") == 2
    for row in ("mean z", "std z", "ESS", "log evidence", "Pareto k-hat"):
        assert row in out
    # With 50 prior particles the weights are heavy-tailed: the library says so.
    assert "prior IS, N = 50: Pareto k-hat" in out
    assert figure.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_the_demo_without_compilation(capsys):
    demo.main(["--num-particles", "100", "--compile-steps", "0"])
    out = capsys.readouterr().out
    assert "prior IS, N = 100" in out and "CSIS" not in out


def test_the_demo_rejects_bad_arguments():
    with pytest.raises(SystemExit):
        demo.main(["--num-particles", "many"])


@pytest.mark.parametrize("module", ["infcomp.demo", "infcomp.sir_demo"])
def test_the_demos_run_torch_on_one_thread(module, monkeypatch):
    # The thread count is set in main (not at import): two threads on a loaded
    # 2-core machine made `make demo` about 8 times slower.
    import importlib

    script = importlib.import_module(module)
    monkeypatch.setattr(script, "report", lambda *args: "")
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        script.main([])
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(threads)
