"""Messages through logging: a script's one handler (info on stdout, warnings on stderr), --quiet, and a user's own
handler in place of it."""
import logging

import numpy as np

from core import messages
from core.common import cli
from tests.checkpoints import write_checkpoint
from tests.scripts import run_main, run_predict
from uploads.records import load_predictions


def test_predict_quiet_writes_the_same_files_and_says_nothing(marker_set, tmp_path, capsys):
    ckpt = write_checkpoint(tmp_path / "run" / "best.pt", "ghost_lite", marker_set)
    code, out, err = run_predict(["--ckpt", ckpt, "--tta", 2, "--out", tmp_path / "loud", "--workers", 0], capsys)
    assert code == 0 and "checkpoint " in out and "scores on 3 labelled images" in out, err
    code, out, err = run_predict(["--ckpt", ckpt, "--tta", 2, "--out", tmp_path / "quiet", "--workers", 0,
                                  "--quiet"], capsys)
    assert code == 0 and out == "" and err == "", out + err          # no info lines, no progress lines either
    loud, quiet = (load_predictions(tmp_path / f"{name}.npz") for name in ("loud", "quiet"))
    np.testing.assert_array_equal(loud["xyz"], quiet["xyz"])


def test_a_script_sets_up_one_handler_for_the_call_and_takes_it_away(capsys):
    project = logging.getLogger(messages.ROOT)
    before = (list(project.handlers), project.level, project.propagate)

    @cli
    def main(argv=None):
        assert len(project.handlers) == len(before[0]) + 1
        messages.set_quiet(argv == ["--quiet"])
        messages.logger("tests").info("an info line")
        messages.logger("tests").warning("a warning")
    for _ in range(2):
        assert run_main(main, [], capsys)[1:] == ("an info line\n", "warning: a warning\n")
    assert run_main(main, ["--quiet"], capsys)[1:] == ("", "warning: a warning\n")
    assert (list(project.handlers), project.level, project.propagate) == before


def test_a_user_of_the_library_gets_the_messages_where_they_ask(tmp_path, monkeypatch):
    """No script: the messages reach the user's own handler on the project's logger, and nothing else prints."""
    import data
    heard = []
    handler = logging.Handler(logging.INFO)
    handler.emit = lambda record: heard.append(record.getMessage())
    project = logging.getLogger(messages.ROOT)
    level = project.level
    project.setLevel(logging.INFO)
    project.addHandler(handler)
    try:
        monkeypatch.setattr(data, "DEFAULT_DATA_ROOT", tmp_path / "freihand")
        monkeypatch.setenv("HANDPOSE_SYNTHETIC", str(tmp_path / "synthetic"))
        monkeypatch.setattr(data, "SYNTHETIC_DEFAULT", {"n_train": 2, "n_eval": 1, "seed": 0, "size": 64,
                                                        "versions": 1})
        data.resolve_or_generate_data_root()
    finally:
        project.removeHandler(handler)
        project.setLevel(level)
    assert len(heard) == 1 and heard[0].startswith("no dataset in ") and "generating the synthetic set" in heard[0]
