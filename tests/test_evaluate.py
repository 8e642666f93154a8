import json
import subprocess
import sys

import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from cifarlab.cli import main
from cifarlab.data.records import load_split
from cifarlab.evaluate import evaluate_model, metrics_from_logits, predict_logits
from cifarlab.run.trained import open_run


def _logits_for(predictions, k):
    return torch.nn.functional.one_hot(torch.tensor(predictions), k).float() * 5


def test_confusion_matrix_and_per_class_accuracy_by_hand():
    labels = torch.tensor([0, 0, 1, 1, 2, 2])
    result = metrics_from_logits(_logits_for([0, 1, 1, 1, 2, 0], 3), labels, 3)
    assert result["confusion_matrix"] == [[1, 1, 0], [0, 2, 0], [1, 0, 1]]
    assert result["per_class"] == [0.5, 1.0, 0.5]
    assert result["per_class_examples"] == [2, 2, 2]
    assert result["precision_at_1"] == 4 / 6 and result["correct"] == 4 and result["examples"] == 6
    assert result["precision_at_5"] == 1.0  # 3 classes: the label is always in the top 5


def test_precision_at_5_counts_the_label_in_the_top_five():
    logits = torch.arange(10.0).repeat(3, 1)  # class 9 best, then 8, ...
    result = metrics_from_logits(logits, torch.tensor([9, 5, 4]), 10)
    assert result["precision_at_1"] == 1 / 3
    assert result["precision_at_5"] == 2 / 3  # 9 and 5 are in the top five, 4 is not


def test_each_test_image_is_counted_once_whatever_the_batch(trained_run):
    trained = open_run(trained_run)
    model, recipe = trained.model, trained.recipe
    images, labels = load_split(trained_run / "synthetic-data", "test")
    assert labels.numel() == 70
    by_32 = evaluate_model(model, recipe, images, labels, num_classes=10, batch_size=32)
    by_1000 = evaluate_model(model, recipe, images, labels, num_classes=10, batch_size=1000)
    assert by_32["examples"] == 70 and sum(map(sum, by_32["confusion_matrix"])) == 70
    assert by_32["correct"] == by_1000["correct"]
    torch.testing.assert_close(predict_logits(model, recipe, images, batch_size=32, device=torch.device("cpu")),
                               predict_logits(model, recipe, images, batch_size=7, device=torch.device("cpu")))  # fmt: skip


def test_eval_command_reports_saves_and_logs(trained_run, capsys):
    assert main(["eval", str(trained_run), "--json", "--batch-size", "32"]) == 0
    out = capsys.readouterr().out
    result = json.loads(out.strip().splitlines()[-1])
    assert set(result) >= {
        "precision_at_1",
        "precision_at_5",
        "loss",
        "examples",
        "step",
        "per_class",
        "confusion_matrix",
    }
    assert result["step"] == 60 and result["examples"] == 70
    assert "per-class accuracy:" in out and "confusion matrix (rows: true class" in out
    saved = json.loads((trained_run / "eval" / "step-00000060.json").read_text())
    assert saved["precision_at_1"] == result["precision_at_1"]
    assert (trained_run / "eval" / "step-00000060-confusion.png").stat().st_size > 1000
    events = EventAccumulator(str(trained_run / "eval"))
    events.Reload()
    assert [e.step for e in events.Scalars("eval/precision_at_1")][-1] == 60

    # An older checkpoint, the raw weights, TTA and the train split are all reachable.
    assert main(["eval", str(trained_run), "--checkpoint", str(trained_run / "ckpt-00000030.pt"), "--weights", "raw",
                 "--tta", "--split", "train", "--json"]) == 0  # fmt: skip
    other = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert other["step"] == 30 and other["examples"] == 400
    assert (trained_run / "eval" / "step-00000030-train-raw-tta.json").is_file()
    # a checkpoint's bare name is looked up in the run directory
    assert main(["eval", str(trained_run), "--checkpoint", "ckpt-00000030.pt", "--json"]) == 0
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["step"] == 30


def test_eval_errors_are_one_line(tmp_path, capsys):
    assert main(["eval", str(tmp_path)]) == 1
    assert "not a cifarlab run directory (no config.json)" in capsys.readouterr().err
    assert main(["eval", str(tmp_path), "--checkpoint", str(tmp_path / "nope.pt")]) == 1
    assert "no such file" in capsys.readouterr().err


def test_watch_evaluates_each_checkpoint_of_a_concurrent_run_once_and_stops(tmp_path):
    run = tmp_path / "run"
    train = subprocess.Popen([sys.executable, "-m", "cifarlab", "train", "--synthetic", "--run-dir", str(run),
                              "--max-steps", "40", "--batch-size", "16", "--checkpoint-every", "10", "--threads", "1",
                              "--set", "synthetic_train_per_class=20", "--set", "synthetic_test_per_class=5", "--no-progress"],
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)  # fmt: skip
    watch = subprocess.run([sys.executable, "-m", "cifarlab", "eval", str(run), "--watch", "--interval-secs", "1",
                            "--threads", "1", "--json"], capture_output=True, text=True, timeout=300)  # fmt: skip
    train_out, _ = train.communicate(timeout=300)
    assert train.returncode == 0, train_out
    assert watch.returncode == 0, watch.stderr
    steps = [json.loads(line)["step"] for line in watch.stdout.splitlines() if line.startswith("{")]
    assert sorted(steps) == [10, 20, 30, 40] and len(set(steps)) == 4  # each once
    assert "training finished, last checkpoint at step 40; stopping" in watch.stdout
    assert sorted(p.name for p in (run / "eval").glob("step-*.json")) == [
        f"step-000000{s}.json" for s in (10, 20, 30, 40)
    ]
    # A second watcher on the finished run has nothing left to do and stops at once.
    again = subprocess.run([sys.executable, "-m", "cifarlab", "eval", str(run), "--watch", "--interval-secs", "1", "--json"],
                           capture_output=True, text=True, timeout=120)  # fmt: skip
    assert again.returncode == 0 and not [
        line for line in again.stdout.splitlines() if line.startswith("{")
    ]
