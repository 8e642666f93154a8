from PIL import Image

from cifarlab.cli import main


def test_report_writes_plots_and_a_summary(trained_run, tmp_path, capsys):
    assert main(["report", str(trained_run)]) == 0
    out = trained_run / "report"
    for name in ("loss.png", "learning_rate.png", "examples_per_sec.png", "eval_precision.png"):
        with Image.open(out / name) as image:
            assert image.size[0] > 300
    text = (out / "report.md").read_text()
    assert "Final precision @ 1:" in text and "at step 60" in text
    assert "| max_steps | 60 |" in text and "![loss](loss.png)" in text


def test_report_without_metrics_is_a_clear_error(tmp_path, capsys):
    assert main(["report", str(tmp_path)]) == 1
    assert "no metrics.jsonl" in capsys.readouterr().err
