"""Every command refuses a count below 1 the same way: argparse's usage error naming the flag, exit
code 2, before any work (the shared commands.positive_int). No shape letters."""
from __future__ import annotations

import pytest

from mambakit.cli import main


@pytest.mark.parametrize("argv", [
    ["demo", "--quick", "--steps", "0"],
    ["demo", "--quick", "--jobs", "0"],
    ["serve", "--model", "mamba2-tiny", "--max-tokens-limit", "0"],
    ["task", "train", "--task", "mqar", "--model", "mamba2-tiny", "--chunk-len", "0"],
    ["eval", "needle", "--model", "mamba2-tiny", "--threads", "0"],
])
def test_a_count_of_zero_is_an_argparse_error(argv, capsys):
    with pytest.raises(SystemExit) as exit_:
        main(argv)
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert f"mambakit {argv[0]}" in err and f"argument {argv[-2]}: expected a positive int, got 0" in err
