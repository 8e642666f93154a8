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


def test_a_constant_series_is_drawn_from_zero_with_plain_labels():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from cifarlab.report import _plain_y_axis

    fig, ax = plt.subplots()
    ax.plot([0, 10, 20], [0.1, 0.1, 0.1])  # the tutorial's rate before its first decay
    _plain_y_axis(ax)
    assert ax.get_ylim() == (0, 0.1 * 1.2)
    fig.canvas.draw()
    assert not ax.yaxis.get_offset_text().get_text()  # no "+1e-1" above the axis
    plt.close(fig)


def test_the_report_names_what_a_default_data_dir_means(trained_run):
    assert main(["report", str(trained_run)]) == 0
    text = (trained_run / "report" / "report.md").read_text()
    assert "| data_dir | None |" not in text
    assert "| data_dir | default: $CIFARLAB_DATA, else ~/.cache/cifarlab |" in text
