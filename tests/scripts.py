"""Running the project's scripts inside the test process, and making their data."""
import subprocess
import sys

from core.common import PROJECT_ROOT


def make_synthetic_set(root, train, evaluation, seed, size):
    """A synthetic FreiHAND-layout set in ``root``, made by the project's generator as a user would."""
    subprocess.run([sys.executable, "-m", "data.synthetic", "--out", str(root), "--train", str(train), "--eval",
                    str(evaluation), "--seed", str(seed), "--size", str(size)], cwd=PROJECT_ROOT, check=True,
                   capture_output=True)
    return root

def run_main(main, argv, capsys):
    """A script's ``main`` (wrapped by common.cli) in this process: (exit code, stdout, stderr)."""
    code = 0
    try:
        main([str(a) for a in argv])
    except SystemExit as stop:
        code = stop.code
    out, err = capsys.readouterr()
    return code, out, err
