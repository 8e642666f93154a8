"""The recipe seam: a recipe defined here, in the test, with its own network, transform,
optimizer, schedule and weight average, goes through the unchanged trainer, eval, predict
and export. If this needs an edit outside this file, the seam has leaked."""

import json
from dataclasses import dataclass

import numpy as np
import onnxruntime
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from cifarlab import recipes
from cifarlab.cli import main
from cifarlab.data.records import load_split
from cifarlab.run.checkpoint import load_checkpoint
from cifarlab.run.trained import open_run
from cifarlab.settings import setting

pytestmark = pytest.mark.slow


class TinyNet(nn.Module):
    """32x32 input (no crop), BatchNorm: nothing like the tutorial's network."""

    def __init__(self, num_classes: int, mean: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("pixel_mean", mean.view(1, 3, 1, 1))  # data-dependent init
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.norm = nn.BatchNorm2d(8)
        self.head = nn.Linear(8, num_classes)

    def forward(self, x):  # [N, 3, 32, 32] in [0, 1]
        x = F.relu(self.norm(self.conv(x - self.pixel_mean)))
        return self.head(x.mean(dim=(2, 3)))


class ScaleToUnit(nn.Module):
    def forward(self, images):  # uint8 [N, 32, 32, 3] -> float [N, 3, 32, 32]
        return images.permute(0, 3, 1, 2).float() / 255


class LookaheadAverage:
    """Every 3 steps, pull the model halfway back to a slow copy: writes into the model."""

    def __init__(self, model):
        self.slow = {k: v.detach().clone() for k, v in model.state_dict().items()}
        self.model = model

    @torch.no_grad()
    def update(self, model, step):
        if step % 3 == 0:
            for k, v in model.state_dict().items():
                if v.is_floating_point():
                    self.slow[k].lerp_(v, 0.5)
                    v.copy_(self.slow[k])

    def state_dict(self):
        return self.slow

    def load_state_dict(self, state):
        for k, v in state.items():
            self.slow[k].copy_(v)

    def evaluated_state(self):
        return self.model.state_dict()


@dataclass(frozen=True)
class TinyParams:
    peak_lr: float = setting(0.05, "learning rate at the top of the triangle", above=0)
    flip_everything: bool = setting(True, "mirror every training image")


@recipes.register
class Tiny(recipes.Recipe):
    name = "tiny-test"
    Params = TinyParams
    run_defaults = {"max_steps": 12, "batch_size": 20}
    run_length_resumable = False  # the triangle spans the run
    final_eval_tta = True

    def build_model(self, num_classes, train_images):
        mean = torch.zeros(3)
        if train_images is not None:
            mean = train_images.float().mean(dim=(0, 1, 2)) / 255
        return TinyNet(num_classes, mean)

    def train_transform(self, images, generator, position):
        x = ScaleToUnit()(images)
        return x.flip(3) if self.params.flip_everything else x

    def eval_preprocess(self):
        return ScaleToUnit()

    def tta_logits(self, model, x):
        return (2 * model(x) + model(x.flip(2))) / 3  # an unusual view: upside down

    def loss(self, model, logits, labels):
        ce = F.cross_entropy(logits, labels, label_smoothing=0.1)
        return ce, {"smoothed_cross_entropy": ce}

    def build_optimizer(self, model):
        norm = [p for n, p in model.named_parameters() if n.startswith("norm.")]
        rest = [p for n, p in model.named_parameters() if not n.startswith("norm.")]
        return torch.optim.Adam([{"params": rest}, {"params": norm}])

    def weight_average(self, model, plan):
        return LookaheadAverage(model)

    def learning_rates(self, step, plan):
        rise = 1 - abs(2 * (step + 0.5) / plan.max_steps - 1)
        return [self.params.peak_lr * rise, 0.0]  # the norm layer is frozen


SMALL = ["--synthetic", "--set", "synthetic_train_per_class=10", "--set", "synthetic_test_per_class=4",
         "--no-progress", "--recipe", "tiny-test", "--checkpoint-every", "4"]  # fmt: skip


def _weights(path):
    state = load_checkpoint(path)
    return state["model"], state["average"]


def test_a_recipe_defined_in_a_test_trains_resumes_evaluates_predicts_exports(tmp_path, capsys):
    straight, split = tmp_path / "straight", tmp_path / "split"
    assert main(["train", *SMALL, "--run-dir", str(straight), "--json"]) == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert result["step"] == 12 and result["examples"] == 40
    saved = json.loads((straight / "config.json").read_text())
    assert saved["recipe"] == "tiny-test" and saved["params"] == {
        "peak_lr": 0.05,
        "flip_everything": True,
    }
    state = load_checkpoint(straight / "ckpt-00000012.pt")
    assert state["optimizer"]["param_groups"][1]["lr"] == 0.0  # the recipe's per-group schedule
    assert not torch.equal(
        state["model"]["conv.weight"], torch.zeros_like(state["model"]["conv.weight"])
    )
    frozen = load_checkpoint(straight / "ckpt-00000004.pt")["model"]["norm.weight"]
    assert torch.equal(state["model"]["norm.weight"], frozen)  # lr 0 kept it (Adam, no decay)

    # The run length is part of this recipe's schedule: a continued run may not change it.
    assert main(["train", *SMALL, "--run-dir", str(straight), "--max-steps", "16"]) == 1
    assert "max_steps (saved 12, asked 16)" in capsys.readouterr().err
    # As if killed after step 4's checkpoint: the run directory holds only that and config.json.
    split.mkdir()
    (split / "ckpt-00000004.pt").write_bytes((straight / "ckpt-00000004.pt").read_bytes())
    (split / "config.json").write_text(
        (straight / "config.json").read_text().replace(str(straight), str(split))
    )
    assert main(["train", "--run-dir", str(split), "--no-progress"]) == 0
    assert "resuming" in capsys.readouterr().out
    for a, b in zip(
        _weights(straight / "ckpt-00000012.pt"), _weights(split / "ckpt-00000012.pt"), strict=True
    ):
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)

    # eval with the recipe's TTA equals a hand computation of its views
    assert main(["eval", str(straight), "--tta", "--json"]) == 0
    tta = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    trained = open_run(straight)
    images, labels = load_split(straight / "synthetic-data", "test")
    with torch.no_grad():
        x = images.permute(0, 3, 1, 2).float() / 255
        logits = (2 * trained.model(x) + trained.model(x.flip(2))) / 3
    assert tta["precision_at_1"] == (logits.argmax(1) == labels).double().mean().item()
    assert (
        tta["precision_at_1"] == result["precision_at_1"]
    )  # the trainer's final eval used TTA too

    # predict uses the recipe's preprocessing: a lossless 32x32 image gives its test logits
    Image.fromarray(images[0].numpy()).save(tmp_path / "0.png")
    assert main(["predict", str(straight), str(tmp_path / "0.png"), "--json", "--top-k", "1"]) == 0
    top = json.loads(capsys.readouterr().out.strip().splitlines()[-1])["results"][0]["top"][0]
    with torch.no_grad():
        expected = trained.model(x[:1]).softmax(1)[0]
    assert top["index"] == int(expected.argmax()) and top["probability"] == pytest.approx(
        float(expected.max()), rel=1e-5
    )

    # export: the graph holds the recipe's preprocessing and is checked against the eval path
    assert main(["export", str(straight), "--out", str(tmp_path / "tiny.onnx")]) == 0
    session = onnxruntime.InferenceSession(
        str(tmp_path / "tiny.onnx"), providers=["CPUExecutionProvider"]
    )
    exported = session.run(["logits"], {"images": images.numpy()})[0]
    np.testing.assert_allclose(exported, trained.model(x).detach().numpy(), atol=1e-4)

    # a wrong recipe parameter names the valid ones, run fields and the recipe's own
    assert main(["train", *SMALL, "--run-dir", str(tmp_path / "x"), "--set", "peak_rate=1"]) == 1
    err = capsys.readouterr().err
    assert (
        "unknown field(s) peak_rate for recipe 'tiny-test'" in err
        and "peak_lr" in err
        and "max_steps" in err
    )


def test_a_run_saved_before_a_setting_existed_keeps_what_it_computed_then():
    from cifarlab.config import build_config, config_from_dict
    from cifarlab.recipes.fast import CheapestParams, Params
    from cifarlab.settings import declared_default

    # `fast` switched precision to auto after runs were saved without the field: those
    # resume at the declared default (float32), not the variant's; recorded values stand.
    assert declared_default(CheapestParams, "precision") == "float32" == Params().precision
    assert declared_default(CheapestParams, "width") == 256  # declared; fast's is 192
    saved = build_config("fast").to_dict()
    assert saved["params"]["precision"] == "auto"
    assert config_from_dict(saved, "config.json").params.precision == "auto"
    del saved["params"]["precision"], saved["params"]["width"]
    restored = config_from_dict(saved, "config.json")
    assert restored.params.precision == "float32" and restored.params.width == 256
    assert restored.params.hard_keep == 0.7  # a recorded field keeps its value
