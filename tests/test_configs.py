"""configs/: every configuration the documents report, by name. Each file builds, and the
training FLOPs its comment states are what cifarlab/flops.py counts for it."""

import re
from pathlib import Path

import pytest

from cifarlab.config import build_config, load_toml
from cifarlab.flops import training_flops

CONFIGS = sorted((Path(__file__).parents[1] / "configs").glob("*.toml"))


def test_there_are_named_configurations():
    assert len(CONFIGS) >= 10


@pytest.mark.parametrize("path", CONFIGS, ids=[p.stem for p in CONFIGS])
def test_a_named_configuration_builds_and_states_its_result_and_flops(path):
    values = load_toml(path)
    config = build_config(values.pop("recipe"), values)
    comment = " ".join(line for line in path.read_text().splitlines() if line.startswith("#"))
    assert re.search(r"\d\d\.\d\d%", comment), "each file says what it measured"
    stated = re.search(r"(\d\.\d\de1[345]) (training )?FLOPs", comment)
    assert stated, "each file states its training FLOPs"
    counted = training_flops(config, 50_000)["run_flops"]
    assert f"{counted:.2e}".replace("e+", "e") == stated.group(1)
