"""Every command in the README's ```bash blocks is run here, in the way that fits it: a script's own argument parser
(and for train.py the config it resolves, so a recipe or config key that no longer exists fails), the data check on
a tiny set, the download commands against the layout. A renamed option breaks this test, not the user; a command
of a kind not handled below fails it until it is."""
import importlib
import re
import shlex
from pathlib import Path

import pytest

from core.common import UserError

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
DATA_ROOT = "data/freihand"
# script or module as the README calls it -> the module whose parse_args reads its command line
SCRIPTS = {"train.py": "train", "predict.py": "predict", "ensemble.py": "ensemble", "bench.py": "bench",
           "tools/results.py": "tools.results", "tools/gpu_check.py": "tools.gpu_check", "data.check": "data.check"}
MAX_LINES, MAX_WIDTH = 250, 160


def bash_commands(text):
    """[(line number, argv)] of every command in the ```bash blocks: comments dropped, && and ; split."""
    commands, in_block = [], False
    for number, line in enumerate(text.splitlines(), 1):
        if line.strip().startswith("```"):
            in_block = line.strip() == "```bash" if not in_block else False
            continue
        if in_block and line.strip():
            words = shlex.split(line, comments=True)
            command = []
            for word in [*words, "&&"]:
                if word in ("&&", ";"):
                    if command:
                        commands.append((number, command))
                    command = []
                else:
                    command.append(word)
    return commands


def parse(module_name, argv):
    """The script's own parser on ``argv``; argparse's error (an unknown option, a bad value) fails the test."""
    module = importlib.import_module(module_name)
    try:
        return module.parse_args(argv)
    except SystemExit as stop:
        pytest.fail(f"{module_name} no longer accepts {shlex.join(argv)} (exit {stop.code})")


def run_python(argv, tmp_path):
    if argv[:2] == ["-m", "pytest"]:
        return  # the suite itself
    script, args = (argv[1], argv[2:]) if argv[0] == "-m" else (argv[0], argv[1:])
    assert script in SCRIPTS, f"README runs {script}: add it to SCRIPTS in tests/test_readme.py"
    if script == "data.check":
        return run_data_check(args, tmp_path)
    parsed = parse(SCRIPTS[script], args)
    if script == "train.py" and not (parsed.resume or parsed.list_archs or parsed.list_runs):
        from training.config import resolve_config
        config, _ = resolve_config(parsed)  # the recipe, the arch and every --set key must exist
        assert config["arch"]


def run_data_check(args, tmp_path):
    """The check itself, on a tiny generated set in place of the README's data root."""
    from data import check, synthetic
    assert args[0] == DATA_ROOT, f"the README checks {args[0]}, not the data root it downloads to ({DATA_ROOT})"
    root = synthetic.generate(tmp_path / "set", 2, 2, seed=0, size=64, workers=1)
    parse("data.check", args)
    check.main([str(root), *args[1:]])


def run_torchrun(argv, tmp_path):
    """torchrun's own options by its parser, then the training command by train.py's."""
    from torch.distributed.run import get_args_parser
    torchrun = get_args_parser().parse_args(argv)
    assert torchrun.training_script == "train.py"
    run_python([torchrun.training_script, *torchrun.training_script_args], tmp_path)


def run_download(argv, downloads):
    """wget -P data/freihand URL: a FreiHAND archive over https into the data root."""
    assert argv[1] == "-P" and argv[2] == DATA_ROOT, f"wget must save into {DATA_ROOT}: {argv}"
    assert re.fullmatch(r"https://lmb\.informatik\.uni-freiburg\.de/data/freihand/FreiHAND_pub_v2(_eval)?\.zip",
                        argv[3]), argv[3]
    downloads.add(f"{DATA_ROOT}/{argv[3].rsplit('/', 1)[1]}")


def run_unzip(argv, downloads):
    """unzip [-o] ARCHIVE -d data/freihand: an archive downloaded above, into the data root."""
    words = [w for w in argv[1:] if w != "-o"]
    assert words[1:] == ["-d", DATA_ROOT], f"unzip must extract into {DATA_ROOT}: {argv}"
    assert words[0] in downloads, f"{words[0]} is not downloaded by the README's commands"


def run_command(argv, tmp_path, downloads):
    program = argv[0]
    if program == "python":
        return run_python(argv[1:], tmp_path)
    if program == "torchrun":
        return run_torchrun(argv[1:], tmp_path)
    if program == "pip":
        assert argv[1:] == ["install", "-r", "requirements.txt"]
        lines = [ln for ln in (ROOT / "requirements.txt").read_text().splitlines() if ln and not ln.startswith("#")]
        assert lines and all(re.fullmatch(r"[A-Za-z0-9_.\-]+==[0-9][A-Za-z0-9.]*", ln) for ln in lines)
        return
    if program == "wget":
        return run_download(argv, downloads)
    if program == "unzip":
        return run_unzip(argv, downloads)
    if program == "tensorboard":
        importlib.import_module("tensorboard")
        assert argv[1:] == ["--logdir", "runs"]
        return
    if program == "bash":
        assert (ROOT / argv[1]).is_file(), f"{argv[1]} does not exist"
        if argv[1] == "tools/gpu_check.sh":
            parse("tools.gpu_check", argv[2:])
        return
    pytest.fail(f"README command {shlex.join(argv)}: no way to run {program!r} here; add one to tests/test_readme.py")


def test_every_readme_command_runs(tmp_path):
    commands = bash_commands(README.read_text())
    assert len(commands) > 10
    downloads = set()
    for number, argv in commands:
        try:
            run_command(argv, tmp_path / f"line{number}", downloads)
        except (AssertionError, UserError) as err:  # name the README line
            raise AssertionError(f"README.md:{number}: {shlex.join(argv)}: {err}") from err


def test_the_readme_is_short_and_narrow():
    lines = README.read_text().splitlines()
    assert len(lines) <= MAX_LINES
    assert not [n for n, line in enumerate(lines, 1) if len(line) > MAX_WIDTH]


def test_every_local_link_of_the_readme_exists():
    links = re.findall(r"\]\(([^)#]+)(?:#[^)]*)?\)", README.read_text())
    local = [link for link in links if "://" not in link]
    missing = [link for link in local if not (ROOT / link).exists()]
    assert local and not missing, missing


def test_an_unknown_command_fails(tmp_path):
    with pytest.raises(pytest.fail.Exception, match="no way to run 'make'"):
        run_command(["make", "all"], tmp_path, set())
    with pytest.raises(AssertionError, match="add it to SCRIPTS"):
        run_command(["python", "augment.py", "--preview"], tmp_path, set())


def test_a_renamed_option_fails(tmp_path):
    with pytest.raises(pytest.fail.Exception, match="no longer accepts"):
        run_command(["python", "predict.py", "--tta-count", "10"], tmp_path, set())
    with pytest.raises(Exception, match="unknown config key"):
        run_command(["python", "train.py", "--arch", "effb4_1d", "--set", "no_such_key=1"], tmp_path, set())
