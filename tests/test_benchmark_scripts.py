"""The benchmark scripts BENCHMARKS.md's figures rest on run, and report what they claim to."""

import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from cifarlab.models import bf16_conv, winograd

ROOT = Path(__file__).resolve().parents[1]


def run_script(command_line: str) -> str:
    """Runs `python benchmarks/SCRIPT ARGS...` as a user would; returns what it printed and
    fails the test if the script fails."""
    script, *args = shlex.split(command_line)
    command = [sys.executable, str(ROOT / "benchmarks" / script), *args]
    return subprocess.run(command, capture_output=True, text=True, timeout=600, check=True).stdout


def profile_two_paths(options: str) -> tuple[str, str, str]:
    """fast_step_profile.py on a tiny network (batch 8, width 32, one step) with these
    options: everything it printed, then the first path's section and the second's."""
    out = run_script(
        f"fast_step_profile.py --batch-size 8 --steps 1 --repeats 1 --set width=32 {options}"
    )
    first, second = out.split("\n## fast, ")[1:]
    return out, first, second


ROUTED = {  # --against, its heading, and the algorithm column its 3x3 layers may show
    "precision=bfloat16": ("torch.bfloat16", {f"direct; filter gradient {route}"
                                              for route in bf16_conv.WEIGHT_GRAD_ROUTES}),
    "convolution=winograd": ("torch.float32", {"Winograd F(4x4, 3x3)"}),
}  # fmt: skip


@pytest.mark.slow
@pytest.mark.parametrize("against", sorted(ROUTED))
def test_fast_step_profile_reports_both_paths_layer_by_layer(against):
    out, plain, routed = profile_two_paths(f"--against {against}")
    dtype, routes = ROUTED[against]
    # the first path is the plain one: float32, whatever the recipe's default
    assert plain.startswith("precision=float32 width=32 (torch.float32 arithmetic)")
    assert routed.startswith(f"{against} ({dtype} arithmetic)")
    steps = [float(re.search(r"^step ([\d.]+) s", part, re.M).group(1)) for part in (plain, routed)]
    for part, algorithms in ((plain, {"direct"}), (routed, routes)):
        assert re.search(r"^profiled step: [\d.]+ s, [\d,]+ minor page faults", part, re.M)
        rows = [line for line in part.splitlines() if line.startswith("| [8, ")]
        assert len(rows) == 6  # the five distinct 3x3 shapes (block 3 repeats one) and the stem
        three_by_three = [r for r in rows if ", 3, 3] |" in r]
        assert len(three_by_three) == 5
        assert all(r.rsplit("|", 2)[1].strip() in algorithms for r in three_by_three), part
        # Layers by shape: block 2's second convolution and block 3's first share 32 -> 32
        # at 7x7, one line whose rate counts both; every other shape is one layer's.
        layers = {r.split(" | ")[0]: int(r.split(" | ")[1]) for r in rows}
        assert layers.pop("| [8, 32, 7, 7], [32, 32, 3, 3]") == 2, part
        assert set(layers.values()) == {1}, part
        # direct GFLOP of block 1's first convolution: 2 x 8 x 31 x 31 x 8 x 24 x 9 / 1e9
        assert "| [8, 24, 31, 31], [8, 24, 3, 3] | 1 | 0.0 |" in part
    ratio = float(re.search(r"step ([\d.]+)x as fast as precision=float32 width=32", out).group(1))
    # the steps are printed to 0.01 s: the ratio lies within what that rounding allows (a
    # routed step printed as 0.00 s, as this tiny one is on a fast CPU, bounds it from below)
    low = (steps[0] - 0.005) / (steps[1] + 0.005)
    high = (steps[0] + 0.005) / (steps[1] - 0.005) if steps[1] > 0.005 else float("inf")
    assert low - 0.005 <= ratio <= high + 0.005


@pytest.mark.slow
def test_fast_step_profile_names_a_filter_gradient_route_only_where_the_step_ran_one():
    # bfloat16 first, float32 second: the float32 step's rows once named the routes the
    # bfloat16 step had chosen for the same shapes, though no float32 layer ran them
    _, routed, plain = profile_two_paths("--set precision=bfloat16 --against precision=float32")
    assert plain.startswith("precision=float32 (torch.float32 arithmetic)")
    for part, algorithms in ((routed, ROUTED["precision=bfloat16"][1]), (plain, {"direct"})):
        rows = [r for r in part.splitlines() if r.startswith("| [8, ") and ", 3, 3] |" in r]
        assert len(rows) == 5, part
        assert {r.rsplit("|", 2)[1].strip() for r in rows} <= algorithms, part


@pytest.mark.slow
def test_fast_step_profile_measures_the_fused_kernels_beside_pytorchs_operators():
    out, fused, plain = profile_two_paths("--against-env CIFARLAB_NATIVE=0")
    assert plain.startswith("CIFARLAB_NATIVE=0 (torch.float32 arithmetic)")
    family = "| max-pool, batch norm and GELU fused |"
    # the kernel runs for the shapes where it was timed faster here: the rows say as much
    said = re.search(r"^as a result records it: (.*)$", fused, re.M).group(1)
    everywhere, somewhere = said.endswith("GELU fused"), "GELU fused for " in said
    assert (family in fused) == (everywhere or somewhere)
    assert ("| batch norm |" in fused) == (not everywhere)
    assert family not in plain and "| batch norm |" in plain
    assert re.search(r"^as a result records it: float32$", plain, re.M)
    assert re.search(r"CIFARLAB_NATIVE=0: step [\d.]+x as fast as precision=float32 width=32", out)


def test_fast_step_profile_refuses_a_malformed_environment_pair():
    script = str(ROOT / "benchmarks" / "fast_step_profile.py")
    done = subprocess.run([sys.executable, script, "--against-env", "CIFARLAB_NATIVE"],
                          capture_output=True, text=True, timeout=120)  # fmt: skip
    assert done.returncode == 2
    assert "--against-env takes NAME=VALUE, not 'CIFARLAB_NATIVE'" in done.stderr


@pytest.mark.slow
def test_fast_step_profile_shows_a_proxys_time_apart_from_the_networks_layers():
    plain, proxied = (
        run_script(f"fast_step_profile.py --batch-size 8 --steps 1 --repeats 1 --set width=32{extra}")
        for extra in ("", " --set hard_keep=1 --set proxy_keep=0.5 --set proxy_width=16")
    )  # fmt: skip
    family = re.search(
        r"^\| proxy network choosing the batch \| ([\d,]+) \| (\d+)% \|$", proxied, re.M
    )
    assert family and "proxy network" not in plain
    # its convolutions (16 -> 32 -> 32 at 16 candidates) are its own, not rows of the layers
    rows = [line for line in proxied.splitlines() if line.startswith("| [")]
    assert len(rows) == 6 and all(r.startswith("| [8, ") for r in rows), proxied
    # its scoring and training count in the step's FLOPs: more GFLOP an image than without
    per_image = [float(re.search(r"images/s; ([\d.]+) GFLOP an image", out).group(1))
                 for out in (plain, proxied)]  # fmt: skip
    assert per_image[1] > per_image[0]


@pytest.mark.slow
def test_the_filter_gradient_routes_are_timed_at_every_shape_of_the_network():
    out = run_script(
        "bf16_weight_grad_routes.py --batch-size 4 --rounds 2 --set width=32 --chunks-mb 0.01"
    )
    routes = sorted(bf16_conv.WEIGHT_GRAD_ROUTES)
    header = next(line for line in out.splitlines() if line.startswith("| input, filters"))
    columns = [cell.split(",")[0] for cell in header.split(" | ")[1:-2]]
    assert columns == [*routes, "unfolded at 0.01 MB"]  # 10 kB chunks: one image each
    rows = [line for line in out.splitlines() if line.startswith("| [4, ")]
    # block 1's 24 -> 8 at 31x31 and 8 -> 8 at 15x15, block 2's 8 -> 32 at 15x15 and 32 -> 32
    # at 7x7, block 3's 32 -> 32 at 7x7 (the same shape) and at 3x3
    assert [row.split(" | ")[0] for row in rows] == [
        "| [4, 24, 31, 31], [8, 24, 3, 3]", "| [4, 8, 15, 15], [8, 8, 3, 3]",
        "| [4, 8, 15, 15], [32, 8, 3, 3]", "| [4, 32, 7, 7], [32, 32, 3, 3]",
        "| [4, 32, 3, 3], [32, 32, 3, 3]",
    ]  # fmt: skip
    for row in rows:
        cells = [c.strip() for c in row.strip("| \n").split(" | ")]
        timed = dict(zip(columns, cells[1:-2], strict=True))
        fastest = {r: float(timed[r].split(" / ")[0]) for r in routes}
        # printed to 0.1 ms, so two routes may tie on paper: the named one is among the fastest
        assert fastest[cells[-2]] == min(fastest.values())
        assert cells[-1] in routes


def test_profiled_step_faults_prints_a_row_a_round_and_the_zeroing_alone():
    out = run_script("profiled_step_faults.py --batch-size 8 --rounds 2 --set width=32")
    rows = re.findall(r"^\| (\d) \| [\d.]+ \| [\d,]+ \| [\d.]+ \| [\d,]+ \| (\d+) \|$", out, re.M)
    assert [r[0] for r in rows] == ["1", "2"]
    zeroing = re.findall(
        r"^zeroing \[8, (\d+), (\d+), \d+\] torch.float32 alone: [\d.]+ ms", out, re.M
    )
    assert zeroing == [("8", "31"), ("32", "15")]  # block 1's and block 2's pooled inputs


@pytest.mark.skipif(not winograd.available(), reason="native kernels not built")
def test_winograd_chunks_times_every_variant_in_the_same_rounds():
    out = run_script(
        "winograd_chunks.py --width 32 --batch-size 6 --rounds 2 --chunk-mb 0.01,4"
        " --convolution winograd"
    )
    # every 3x3 shape by Winograd, so that the chunk sizes change what runs
    assert "2 rounds; Winograd for every 3x3 convolution shape" in out
    rows = {line.split(" | ")[0][2:]: line.strip("| ").split(" | ") for line in out.splitlines()
            if line.startswith("| direct") or line.startswith("| Winograd")}  # fmt: skip
    assert list(rows) == ["direct", "Winograd, whole batch", "Winograd, 0.01 MB chunks",
                          "Winograd, 4 MB chunks"]  # fmt: skip
    for name, cells in rows.items():
        median, best, runs = float(cells[1]), float(cells[2]), cells[3].split(", ")  # s
        assert len(runs) == 2 and 0 < best <= median, name
    assert rows["direct"][4] == "1.00x"
    assert rows["Winograd, whole batch"][5] == "1.00x"


@pytest.mark.slow
def test_fused_norm_activation_times_every_block_part_three_ways():
    out = run_script("fused_norm_activation.py --width 16 --batch-size 4 --rounds 2")
    rows = [line.strip("| ").split(" | ") for line in out.splitlines()
            if line.startswith("| block")]  # fmt: skip
    # fast's three blocks at width 16 (block 1: 4 channels), each after both convolutions
    assert [(r[0], r[1]) for r in rows] == [
        ("block 1: pool, BN, GELU", "[4, 4, 31, 31]"), ("block 1: BN, GELU", "[4, 4, 15, 15]"),
        ("block 2: pool, BN, GELU", "[4, 16, 15, 15]"), ("block 2: BN, GELU", "[4, 16, 7, 7]"),
        ("block 3: pool, BN, GELU", "[4, 16, 7, 7]"), ("block 3: BN, GELU", "[4, 16, 3, 3]"),
    ]  # fmt: skip
    for cells in rows:
        # the compiled function and the native kernels compute the same function
        assert all(float(gap) < 1e-4 for gap in cells[8].split(", ")), cells
        # Compile seconds: a warm Inductor cache (a second run on the same machine) makes
        # them round to 0.0, so only their form is fixed here.
        assert float(cells[7]) >= 0, cells
        assert all(re.fullmatch(r"\d+ \(\d+\)", cell) for cell in cells[2:5]), cells
    assert re.search(
        r"^all parts, .*: eager \d+ ms, compiled \d+ ms \([\d.]+x; -?\d+ ms a step saved\), "
        r"native \d+ ms \([\d.]+x; -?\d+ ms a step saved\)$",
        out,
        re.M,
    )


def test_muon_orthogonalize_times_every_bank_three_ways(tmp_path):
    out = run_script("muon_orthogonalize.py --set width=32 --rounds 1")
    rows = [line for line in out.splitlines() if line.startswith("| [")]
    assert len(rows) == 6  # fast: three blocks of two convolutions
    for row in rows:
        *_, written, gram, bf16 = (float(cell) for cell in row.strip("| ").split(" | ")[-3:])
        # float32 either way near float64's function; bfloat16 near it, not equal
        assert written < 1e-5 and gram < 1e-5 and 1e-4 < bf16 < 0.1, row
    # every 3x3 bank has n = 9 x its inputs >= 2.25 m: wide enough for the Gram form
    assert "(as written)" not in out
    assert re.search(r"^Gram form [\d.]+x, bfloat16 [\d.]+x as fast", out, re.M)

    # a Muon run's own momentum instead of random updates: each bank of each checkpoint
    from cifarlab.cli import main

    run = tmp_path / "run"
    assert main(["train", "--recipe", "fast", "--synthetic", "--set", "width=32", "--set",
                 "synthetic_train_per_class=4", "--set", "synthetic_test_per_class=2",
                 "--batch-size", "20", "--max-steps", "2", "--checkpoint-every", "1",
                 "--no-progress", "--run-dir", str(run)]) == 0  # fmt: skip
    out = run_script(f"muon_orthogonalize.py --set width=32 --rounds 1 --checkpoint "
                     f"{run / 'ckpt-00000001.pt'} --checkpoint {run / 'ckpt-00000002.pt'}")  # fmt: skip
    rows = [line for line in out.splitlines() if line.startswith("| [")]
    assert len(rows) == 12 and sum(", step 2 |" in row for row in rows) == 6
    refused = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "muon_orthogonalize.py"),
                              "--recipe", "fast-sgd"], capture_output=True, text=True)  # fmt: skip
    assert refused.returncode == 2 and "does not train with Muon" in refused.stderr
