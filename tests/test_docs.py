"""The documents a newcomer reads first: every figure in the README's results comes from
BENCHMARKS.md, every script and configuration they cite exists, no diary language, and the
evidence kept in the tree stays small."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
BENCHMARKS = ROOT / "BENCHMARKS.md"
DOCS = [README, BENCHMARKS, *sorted((ROOT / "docs").glob("*.md"))]

# Phrases that date a text by the session that wrote it instead of by date and commit.
DIARY = re.compile(
    r"\b(this|next|last|previous|earlier|later|same|first|second|third|fourth|fifth|sixth|"
    r"seventh|eighth|ninth|tenth|a new|a later) (session|sitting)s?\b|\bnext time\b|"
    r"\bsessions? ago\b|\bthis (morning|evening|afternoon)\b",
    re.IGNORECASE,
)
# A figure: a number with a decimal point, a thousands comma or an exponent.
FIGURE = re.compile(r"\d+(?:,\d{3})+(?:\.\d+)?|\d+\.\d+(?:e[+-]?\d+)?|\d+e[+-]?\d+")


def results_table(text: str) -> str:
    section = text.split("\n## Results", 1)[1].split("\n## ", 1)[0]
    return "\n".join(line for line in section.splitlines() if line.startswith("|"))


def test_every_figure_in_the_readme_results_is_in_benchmarks() -> None:
    table = results_table(README.read_text())
    figures = set(FIGURE.findall(table))
    assert len(figures) >= 20, "the results table lost its figures"
    benchmarks = BENCHMARKS.read_text()
    missing = sorted(f for f in figures if f not in benchmarks)
    assert not missing, f"README figures absent from BENCHMARKS.md: {missing}"


def test_the_readme_results_table_is_a_short_ladder() -> None:
    rows = results_table(README.read_text()).splitlines()[2:]  # after header and rule
    assert 3 <= len(rows) <= 8, f"{len(rows)} rows"


def text_files() -> list[Path]:
    files = [*DOCS, *sorted((ROOT / "benchmarks").glob("*.py")), ROOT / "benchmarks/gpu_check.sh"]
    for folder in ("src", "examples", "configs", "tests"):
        files += [p for p in sorted((ROOT / folder).rglob("*")) if p.suffix in {".py", ".toml",
                  ".md", ".cpp", ".sh"} and "egg-info" not in str(p)]  # fmt: skip
    return files


def test_the_readme_promises_the_image_formats_predict_does() -> None:
    from cifarlab.predict import IMAGE_FORMATS

    assert f"({', '.join(IMAGE_FORMATS)}; any size or mode)" in README.read_text()


def test_no_diary_language() -> None:
    hits = []
    for path in text_files():
        if path == Path(__file__):
            continue
        for number, line in enumerate(path.read_text().splitlines(), 1):
            if DIARY.search(line):
                hits.append(f"{path.relative_to(ROOT)}:{number}: {line.strip()}")
    assert not hits, "\n".join(hits)


def test_the_diary_check_would_catch_a_diary_line() -> None:
    assert DIARY.search("Measured in the third session, quiet machine")
    assert DIARY.search("left for next time")
    assert not DIARY.search("start_new_session=True keeps the trainer's group apart")


@pytest.mark.parametrize("cited", ["benchmarks", "configs", "examples"])
def test_every_cited_script_and_configuration_exists(cited: str) -> None:
    pattern = re.compile(rf"\b{cited}/[\w./-]+\.(?:py|sh|toml)\b")
    missing = set()
    for path in DOCS:
        found = pattern.findall(path.read_text())
        missing |= {m for m in found if "NAME" not in m and not (ROOT / m).is_file()}
    assert not missing, f"cited but not in the repository: {sorted(missing)}"


def test_the_evidence_in_the_tree_is_small_and_structured() -> None:
    files = [p for p in (ROOT / "benchmarks/results").rglob("*") if p.is_file()]
    assert files, "benchmarks/results holds the evidence"
    # Saved experiments keep a few KB a seed (benchmarks/save_experiment.py): no checkpoint,
    # event file or log, each of which alone would break one of these bounds. The total
    # grows by about 3 KB a saved seed; its bound catches a bulk copy, not a new experiment.
    assert sum(p.stat().st_size for p in files) <= 1_000_000
    assert max(p.stat().st_size for p in files) <= 64_000
    for seed in (ROOT / "benchmarks/results").rglob("seed-*"):
        assert sum(p.stat().st_size for p in seed.rglob("*")) <= 8_000, (
            f"{seed} holds more than a result"
        )
    assert not [p for p in files if p.suffix not in {".json", ".md"}], "raw logs stay out"


@pytest.mark.parametrize("script", sorted(p.name for p in (ROOT / "benchmarks").glob("*.py")))
def test_every_benchmark_script_runs(script: str) -> None:
    """Each script the figures rest on at least starts and explains itself (the figures
    themselves take minutes to hours: BENCHMARKS.md gives each command)."""
    import subprocess
    import sys

    if script == "tf_reference.py":
        pytest.importorskip("tensorflow")
    done = subprocess.run([sys.executable, str(ROOT / "benchmarks" / script), "--help"],
                          capture_output=True, text=True, timeout=120)  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "usage:" in done.stdout
