"""A run's configuration: the run fields (data, placement, length, batch, seed, intervals)
and the recipe's own parameters, which live in the recipe's module.

Resolution order, later wins: the run fields' defaults, the recipe's `run_defaults` and
parameter defaults, a TOML file (--config), --set key=value, then explicit flags. One flat
namespace of names reaches both parts; a name that is neither is refused with the list of
valid ones. The resolved configuration is saved in the run directory as config.json.
"""

from __future__ import annotations

import dataclasses
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .errors import ConfigError
from .settings import added_since, build, field_names, resumable_names, setting

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

DEFAULT_RECIPE = "tutorial"


@dataclass(frozen=True)
class RunConfig:
    # What to train on
    dataset: str = setting("cifar10", "cifar10 | cifar100", choices=("cifar10", "cifar100"))
    synthetic: bool = setting(False, "train and test on the synthetic set (no download)")
    synthetic_train_per_class: int = setting(
        500, "images per class, synthetic train split", at_least=1
    )
    synthetic_test_per_class: int = setting(
        100, "images per class, synthetic test split", at_least=1
    )
    # Where
    data_dir: str | None = setting(
        None, "data root; none: $CIFARLAB_DATA, else ~/.cache/cifarlab", resumable=True
    )
    run_dir: str | None = setting(None, "none: runs/<recipe>", resumable=True)
    device: str = setting("auto", "auto | cpu | cuda | cuda:N", resumable=True)
    threads: int = setting(
        0, "CPU threads for torch; 0: torch's default (all cores)", at_least=0, resumable=True
    )
    # How long, how big
    max_steps: int = setting(
        100_000,
        "optimizer steps (whether a continued run may change it is the recipe's call)",
        at_least=1,
    )
    batch_size: int = setting(128, "images per step per process", at_least=1)
    global_batch_size: int = setting(
        0, "images per step over all processes; 0: batch_size x processes", at_least=0
    )
    seed: int = setting(0, "weights, data order and augmentation all derive from it", at_least=0)
    # Reporting and saving, in steps
    loss_average_decay: float = setting(
        0.9, "moving average of each loss term, for the summaries", at_least=0, below=1
    )
    log_every: int = setting(10, "steps between console lines", at_least=1, resumable=True)
    summary_every: int = setting(
        100, "steps between TensorBoard summaries and metrics.jsonl", at_least=1, resumable=True
    )
    checkpoint_every: int = setting(1000, "steps between checkpoints", at_least=1, resumable=True)
    keep_checkpoints: int = setting(
        5, "newest checkpoints kept; older ones are removed", at_least=1, resumable=True
    )
    eval_batch_size: int = setting(
        128, "images per forward pass in the end-of-run evaluation", at_least=1, resumable=True
    )
    check_finite_every: int = setting(1, "steps between NaN/Inf checks and stop decisions (each costs a sync on GPU)",
                                      at_least=1, resumable=True)  # fmt: skip


@dataclass(frozen=True)
class TrainConfig:
    """A resolved configuration: the recipe (built once, with its parameters), the run
    fields, and where the recipe's code came from. config.json holds all but the object."""

    recipe_spec: str  # what --recipe said, normalized: a name, a file's absolute path, module:NAME
    run: RunConfig
    params: Any  # the recipe's frozen Params dataclass
    source: Any = dataclasses.field(compare=False)  # recipes.loading.RecipeSource
    recipe: Any = dataclasses.field(compare=False, repr=False)  # the Recipe, with these params

    @property
    def run_dir(self) -> Path:
        return Path(self.run.run_dir or f"runs/{self.short_name}")

    @property
    def short_name(self) -> str:
        """The recipe's name for directories and logs (a file recipe: its file's stem)."""
        if self.source.kind == "file":
            return Path(self.recipe_spec.split(":")[0]).stem
        return self.recipe_spec

    def get(self, name: str) -> Any:
        if name == "recipe":
            return self.recipe_spec
        return getattr(self.run if name in RUN_FIELDS else self.params, name)

    def to_dict(self) -> dict[str, Any]:
        return {
            "format": 2,
            "recipe": self.recipe_spec,
            "recipe_source": self.source.to_dict(),
            "run": dataclasses.asdict(self.run),
            "params": dataclasses.asdict(self.params),
        }

    def flat(self) -> dict[str, Any]:
        """Every field by name, for logs and reports."""
        return {
            "recipe": self.recipe_spec,
            **dataclasses.asdict(self.run),
            **dataclasses.asdict(self.params),
        }

    def global_batch_size(self, world_size: int = 1) -> int:
        return global_batch_size(self.run, world_size)


def global_batch_size(run: RunConfig, world_size: int = 1) -> int:
    """Images per optimizer step over all processes: the one place this is computed."""
    return run.global_batch_size or run.batch_size * world_size


RUN_FIELDS = frozenset(field_names(RunConfig))


def valid_names(recipe) -> list[str]:
    return sorted({"recipe", *RUN_FIELDS, *field_names(recipe.Params)})


def check_names(values: dict[str, Any], recipe, where: str) -> None:
    unknown = sorted(set(values) - set(valid_names(recipe)))
    if unknown:
        raise ConfigError(f"{where}: unknown field(s) {', '.join(unknown)} for recipe {recipe.name!r}; "
                          f"valid: {', '.join(valid_names(recipe))}")  # fmt: skip


def build_config(
    recipe_spec: str = DEFAULT_RECIPE, asked: dict[str, Any] | None = None, saved_source=None
) -> TrainConfig:
    """The recipe's defaults with `asked` (already merged from file, --set, flags) applied.
    Values may be strings (from --set): they are converted to each field's type here.
    `saved_source`: the recipe_source a saved run recorded, to notice changed code."""
    from .recipes import load_recipe
    from .recipes.loading import check_unchanged

    cls, source = load_recipe(recipe_spec)
    source = check_unchanged(source, saved_source)
    asked = {k: v for k, v in (asked or {}).items() if k != "recipe"}
    check_names(asked, cls, "configuration")
    run_values = {**cls.run_defaults, **{k: v for k, v in asked.items() if k in RUN_FIELDS}}
    param_values = {k: v for k, v in asked.items() if k not in RUN_FIELDS}
    params = build(cls.Params, param_values)
    return TrainConfig(source.spec, build(RunConfig, run_values), params, source, cls(params))


def config_from_dict(values: dict[str, Any], where: str) -> TrainConfig:
    """Inverse of to_dict; also reads the flat config.json runs saved before format 2."""
    if not isinstance(values, dict):
        raise ConfigError(f"{where}: expected a JSON object, got {type(values).__name__}")
    try:
        if values.get("format") == 2:
            recipe = values["recipe"]
            flat = {**values["run"], **values["params"]}
        else:
            recipe, flat = _from_flat(values, where)
        if not isinstance(recipe, str):
            raise ConfigError(f"{where}: recipe must be a name, got {recipe!r}")
        return build_config(recipe, {**settings_added_since(recipe, flat), **flat},
                            values.get("recipe_source"))  # fmt: skip
    except (KeyError, TypeError, AttributeError) as e:
        raise ConfigError(
            f"{where}: not a cifarlab run configuration ({type(e).__name__}: {e})"
        ) from None
    except ConfigError as e:
        raise ConfigError(f"{where}: {e}") from None


def settings_added_since(recipe_spec: str, saved: dict[str, Any]) -> dict[str, Any]:
    """{field: value} for the settings added since a saved configuration was written, each at
    its declared default (what the run computed then), not at a default a recipe variant
    took later: a `fast` run saved before `precision` existed trained in float32 and goes on
    in float32, though `fast` now defaults to auto."""
    from .recipes import load_recipe

    cls, _ = load_recipe(recipe_spec)
    return {**added_since(RunConfig, saved), **added_since(cls.Params, saved)}


def _from_flat(values: dict[str, Any], where: str) -> tuple[str, dict[str, Any]]:
    """Before recipes were modules, config.json was one flat dict naming the tutorial's
    model and transform; they are the tutorial recipe's own now."""
    flat = dict(values)
    recipe = flat.pop("recipe", DEFAULT_RECIPE)
    for name in ("model", "augment"):
        value = flat.pop(name, recipe)
        if value != recipe:
            raise ConfigError(f"{where}: {name} {value!r} is not recipe {recipe!r}'s; "
                              "this version cannot rebuild that run")  # fmt: skip
    return recipe, flat


def differing_fields(saved: TrainConfig, asked: dict[str, Any]) -> list[str]:
    """Fields the user asked for explicitly that differ from the saved run's and matter."""
    recipe = saved.recipe
    may_change = resumable_names(RunConfig) | resumable_names(recipe.Params)
    if recipe.run_length_resumable:
        may_change.add("max_steps")
    return sorted(
        name for name, value in asked.items() if name not in may_change and saved.get(name) != value
    )


def parse_set(pairs: list[str]) -> dict[str, str]:
    """--set key=value pairs -> {key: value string}; converted once the recipe is known."""
    out = {}
    for pair in pairs:
        if "=" not in pair:
            raise ConfigError(f"--set {pair!r}: expected key=value")
        key, value = pair.split("=", 1)
        out[key.strip().replace("-", "_")] = value.strip()
    return out


def load_toml(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if path.is_dir():
        raise ConfigError(f"{path}: is a directory, not a TOML config file")
    try:
        with open(path, "rb") as f:
            values = tomllib.load(f)
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such config file") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
        raise ConfigError(f"{path}: not valid TOML ({e})") from None
    except OSError as e:
        raise ConfigError(f"{path}: cannot read ({e.strerror or e})") from None
    nested = [k for k, v in values.items() if isinstance(v, dict)]
    if nested:
        raise ConfigError(
            f"{path}: tables are not fields ({', '.join(nested)}); write key = value lines"
        )
    return values
