"""tools/results.py: two run folders and an ensemble become rows of results.csv that hold their files' figures, and
results.md is rendered from those rows."""
import json

import numpy as np
import pandas as pd
import pytest

from scoring.report import report_scores
from tools import results
from training import recipes


def hands(n, rng):
    return rng.normal(0, 0.03, (n, 21, 3)) + np.array([0, 0, 0.6])


def make_run(root, name, seed, epochs, seconds, speed, val_mm, baseline_mm):
    """A finished run folder as train.py leaves it: config.json, log.csv, summary.json (the keys results.py reads)."""
    folder = root / "runs" / name
    folder.mkdir(parents=True)
    config = {**recipes.recipe_config("hourglass_attn_64_cpu"), "seed": seed, "epochs": epochs,
              "data_root": str(root / "synthetic")}
    (folder / "config.json").write_text(json.dumps(config))
    pd.DataFrame({"epoch": range(1, epochs + 1), "val_pa_mpjpe_mm": [val_mm + 1] * (epochs - 1) + [val_mm],
                  "epoch_seconds": [seconds] * epochs, "train_images_per_s": [speed] * epochs}).to_csv(
        folder / "log.csv", index=False)
    summary = {"arch": config["arch"], "recipe": config["recipe"], "epochs": epochs, "best_epoch": epochs,
               "best_val_pa_mpjpe_mm": val_mm, "val_constant_shape_mm": baseline_mm,
               "best_val_fraction_of_constant_shape": val_mm / baseline_mm, "train_images_per_s": speed}
    (folder / "summary.json").write_text(json.dumps(summary))
    return folder


def predict(folder, prefix, tta, rng, gt, split="evaluation"):
    """PREFIX.metrics.json as predict.py writes it (the same writer), for a prediction of ``folder``'s best.pt."""
    xyz = gt + rng.normal(0, 0.004 * tta ** -0.5, gt.shape)
    info = {"split": split, "arch": "hourglass_attn", "ckpt": str(folder / "best.pt"), "tta": tta,
            "backend": "torch"}
    path = report_scores(prefix, xyz, gt, constant_shape_m=gt.mean(0), info=info)
    return path, json.loads(path.read_text())["reflections_allowed"]


@pytest.fixture
def made(tmp_path, monkeypatch):
    rng = np.random.default_rng(0)
    gt = hands(30, rng)
    submissions = tmp_path / "submissions"
    submissions.mkdir()
    monkeypatch.setenv("HANDPOSE_SUBMISSIONS", str(submissions))
    first = make_run(tmp_path, "first", seed=0, epochs=3, seconds=40.0, speed=150.0, val_mm=15.5, baseline_mm=21.0)
    second = make_run(tmp_path, "second", seed=1, epochs=2, seconds=30.0, speed=120.0, val_mm=16.0, baseline_mm=21.0)
    scores = {}
    # the first run's predictions are found in the submissions folder; one of the validation split is left out
    for tta in (1, 10):
        _, scores["first", tta] = predict(first, submissions / f"first_evaluation_tta{tta}", tta, rng, gt)
    predict(first, submissions / "first_val_tta10", 10, rng, gt, split="val")
    # the second run's only prediction lies elsewhere and is given with --metrics
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    path, scores["second", 10] = predict(second, elsewhere / "second_evaluation_tta10", 10, rng, gt)
    return tmp_path, first, second, path, scores


def test_two_runs_become_rows_holding_their_files_figures(made, capsys):
    tmp_path, first, second, second_metrics, scores = made
    table_path = tmp_path / "docs" / "results.csv"
    results.main(["add", str(first), "--note", "the first", "--csv", str(table_path), "--machine", "a test machine"])
    results.main(["add", str(second), "--metrics", str(second_metrics), "--csv", str(table_path),
                  "--machine", "a test machine", "--data", "1,000 held-back hands"])
    assert "skipped" in capsys.readouterr().out  # the validation-split prediction of the first run
    table = results.read_table(table_path)
    assert list(table.columns) == results.COLUMNS and len(table) == 2
    one, two = table.iloc[0], table.iloc[1]
    assert (one["kind"], one["source"], one["name"], one["recipe"], one["arch"]) == (
        "run", "run", "first", "hourglass_attn_64_cpu", "hourglass_attn")
    assert one["command"] == "python train.py --recipe hourglass_attn_64_cpu --epochs 3"
    assert two["command"] == "python train.py --recipe hourglass_attn_64_cpu --epochs 2 --seed 1"
    assert (one["seed"], one["epochs"], one["data"], one["note"]) == (0, 3, "synthetic", "the first")
    assert two["data"] == "1,000 held-back hands"  # --data: what its --metrics were scored on
    assert one["wall_minutes"] == 2.0 and two["wall_minutes"] == 1.0
    assert one["images_per_s"] == 150.0 and one["machine"] == "a test machine"
    assert one["val_mm"] == 15.5 and one["val_fraction"] == pytest.approx(round(15.5 / 21.0, 3))
    for (run, tta), aligned in scores.items():
        row = one if run == "first" else two
        assert row[f"eval_tta{tta}_mm"] == pytest.approx(round(aligned["pa_mpjpe_mm"], 2))
        assert row[f"eval_tta{tta}_fraction"] == pytest.approx(round(aligned["fraction_of_constant_shape"], 3))
    assert pd.isna(two["eval_tta1_mm"])  # not predicted at --tta 1

    markdown = tmp_path / "docs" / "results.md"
    results.main(["render", "--csv", str(table_path), "--out", str(markdown)])
    text = markdown.read_text()
    assert "## Training runs" in text and "## Ensembles" not in text
    rows = [line for line in text.splitlines() if line.startswith(("| first", "| second"))]
    assert len(rows) == 2
    cells = [cell.strip() for cell in rows[0].strip("|").split("|")]
    aligned = scores["first", 10]
    assert cells[1] == "`python train.py --recipe hourglass_attn_64_cpu --epochs 3`"
    assert cells[7] == f"15.50 mm = {100 * 15.5 / 21.0:.1f} %"
    fraction = 100 * round(aligned['fraction_of_constant_shape'], 3)
    assert cells[9] == f"{round(aligned['pa_mpjpe_mm'], 2):.2f} mm = {fraction:.1f} %"
    assert cells[-2:] == ["run", "the first"]


def test_an_ensemble_row_names_its_members_and_weights(made):
    tmp_path, _, _, second_metrics, _ = made
    rng = np.random.default_rng(1)
    gt = hands(30, rng)
    prefix = tmp_path / "submissions" / "pair_evaluation"
    members = [str(tmp_path / "submissions" / "first_evaluation_tta10.npz"), str(second_metrics)[:-13] + ".npz"]
    (tmp_path / "submissions" / "pair_evaluation.ensemble.json").write_text(json.dumps(
        {"name": "pair", "members": members, "split": "evaluation", "weights": [0.4, 0.6]}))
    report_scores(prefix, gt + 0.001, gt, constant_shape_m=gt.mean(0), info={"split": "evaluation"})
    table_path = tmp_path / "results.csv"
    results.main(["add", f"{prefix}.ensemble.json", "--csv", str(table_path), "--machine", "m"])
    row = results.read_table(table_path).iloc[0]
    assert (row["kind"], row["name"], row["arch"]) == ("ensemble", "pair", "ensemble")
    assert row["command"].endswith("--weights 0.400 0.600") and members[0] in row["command"]
    assert not pd.isna(row["eval_tta10_mm"])  # both members were predicted with --tta 10


def test_a_folder_that_is_no_run_is_one_line(tmp_path, capsys):
    with pytest.raises(SystemExit) as stop:
        results.main(["add", str(tmp_path), "--csv", str(tmp_path / "r.csv")])
    err = capsys.readouterr().err.strip()
    assert stop.value.code == 2 and len(err.splitlines()) == 1 and "config.json does not exist" in err


def test_a_budgeted_run_s_command_is_the_one_given_and_its_epochs_are_those_trained():
    """A time budget's run: the row's command is what was typed (the recipe's epochs), the epochs column what
    trained; an --epochs that was typed stays in the command."""
    config = {**recipes.recipe_config("hourglass_attn_64_cpu"), "seed": 1, "epochs": 40, "epochs_asked": 76,
              "budget_epoch_seconds": {"64": 29.0, "96": 52.0}}
    assert results.command_of(config) == "python train.py --recipe hourglass_attn_64_cpu --seed 1"
    assert results.command_of({**config, "epochs_asked": 90}) == \
        "python train.py --recipe hourglass_attn_64_cpu --epochs 90 --seed 1"
    assert results.command_of({**config, "epochs_asked": 90, "budget_epoch_seconds": None, "epochs": 90}) == \
        "python train.py --recipe hourglass_attn_64_cpu --epochs 90 --seed 1"
