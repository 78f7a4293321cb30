"""``python -m infcomp``: the command line (:mod:`infcomp.cli`)."""

from infcomp.cli import run

if __name__ == "__main__":
    run()
