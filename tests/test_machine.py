"""The CPU as figures name it: cifarlab.machine against `lscpu`, the tool BENCHMARKS.md's
"Machines" table tells kinds apart by."""

from __future__ import annotations

import shutil
import subprocess

import pytest

from cifarlab.machine import KIND_FLAGS, cpu_description, cpu_kind, cpu_name


def _lscpu() -> dict[str, str]:
    out = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
    return {k.strip(): v.strip() for k, _, v in (line.partition(":") for line in out.splitlines())}


@pytest.mark.skipif(shutil.which("lscpu") is None, reason="needs lscpu")
def test_the_cpu_kind_names_what_lscpu_tells_kinds_apart_by():
    lscpu = _lscpu()
    kind = cpu_kind()
    assert kind.startswith(cpu_name() + " (") and cpu_name() == lscpu["Model name"]
    if "CPU family" in lscpu and "Model" in lscpu:
        assert f"family {lscpu['CPU family']} model {lscpu['Model']}; " in kind
    flags = set(lscpu.get("Flags", "").split())
    named = [flag for flag in KIND_FLAGS if flag in flags]
    assert kind.endswith(" ".join(named) + ")" if named else "no AVX2)")
    # The kernel cache's key: the model name and every flag, from the first processor only.
    description = cpu_description()
    assert lscpu["Model name"] in description
    assert all(flag in description for flag in flags)
    assert description.count("flags") == 1
