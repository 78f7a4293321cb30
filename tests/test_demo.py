import pytest

from infcomp import demo


def test_the_demo_prints_estimates_next_to_the_exact_answer(capsys):
    demo.main(["--num-samples", "50", "20000"])
    out = capsys.readouterr().out
    assert "prior IS, N = 50" in out and "prior IS, N = 20,000" in out
    assert "7.2500" in out and "-8.2394" in out
    for row in ("mean z", "std z", "ESS", "log evidence", "Pareto k-hat"):
        assert row in out
    # With 50 prior particles the weights are heavy-tailed: the library says so.
    assert "N = 50: Pareto k-hat" in out


def test_the_demo_rejects_bad_arguments():
    with pytest.raises(SystemExit):
        demo.main(["--num-samples", "many"])
