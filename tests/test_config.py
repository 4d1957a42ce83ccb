"""Configs: YAML + overrides, and clear errors naming the file and field."""

import re
from pathlib import Path

import pytest

from rewardlab.cli import main
from rewardlab.config import load_config
from rewardlab.utils import RewardlabError

ROOT = Path(__file__).resolve().parents[1]


def test_default_yaml_equals_builtin_defaults():
    cfg = load_config(ROOT / "configs/default.yaml")
    assert cfg.pretrain.steps == 1000 and cfg.label.rater.preset == "time-pressed"
    assert cfg.arm == "time-pressed-s0"
    assert cfg.stage_dir("sft") == Path("runs/default/sft")
    assert cfg.stage_dir("reward") == Path("runs/default/time-pressed-s0/reward")


def _leaves(d: object, prefix: str = "") -> dict[str, object]:
    if isinstance(d, dict):
        out: dict[str, object] = {}
        for k, v in d.items():
            out.update(_leaves(v, f"{prefix}{k}."))
        return out
    return {prefix[:-1]: d}


def test_make_demo_is_the_full_curve_demonstration_made_smaller():
    """`make demo` runs configs/demo.yaml: full-curve.yaml's task, raters, SFT data and methods, with only the
    documented sizes cut (README "The demonstration"); any other difference would change what it shows."""
    assert "rewardlab run configs/demo.yaml" in (ROOT / "Makefile").read_text(encoding="utf-8")
    demo = _leaves(load_config(ROOT / "configs/demo.yaml").model_dump())
    full = _leaves(load_config(ROOT / "configs/full-curve.yaml").model_dump())
    changed = {k: (full[k], demo[k]) for k in full if demo[k] != full[k]}
    assert changed == {
        "run_dir": ("runs/full-curve", "runs/demo"),
        "pretrain.batch_size": (128, 48),
        "pretrain.eval_every": (250, 1000),
        "sft.steps": (400, 300),
        "sft.eval_every": (100, 300),
        "label.num_prompts": (12000, 6000),
        "reward.epochs": (2, 1),
        "reward.shared_prompt": (False, True),
        "ppo.prompts_per_step": (32, 16),
        "ppo.value_model": ("separate", "shared"),
        "ppo.eval_prompts": (1024, 384),
        "bon.prompts": (512, 128),
    }


def test_overrides_typed_and_nested():
    cfg = load_config(None, ["pretrain.steps=7", "label.rater.preset=unbiased", "task.ops=['+']", "seed=3"])
    assert cfg.pretrain.steps == 7
    assert cfg.label.rater.verify_prob == [1.0, 1.0, 1.0]  # preset filled the fields
    assert cfg.task.ops == ["+"]
    assert cfg.arm == "unbiased-s3"


@pytest.mark.parametrize(
    ("yaml_text", "needle"),
    [
        ("pretrain:\n  stepz: 3\n", "pretrain.stepz: unknown key"),
        ("pretrain:\n  steps: many\n", "pretrain.steps"),
        ("pretrain:\n  steps: -1\n", "pretrain.steps"),
        ("label:\n  rater:\n    beta: 0\n", "label.rater.beta"),
        ("bogus: 1\n", "bogus: unknown key"),
        ("- 1\n- 2\n", "top level must be a mapping"),
        ("a: [1,\n", "malformed YAML"),
    ],
)
def test_bad_config_errors_name_file_and_field(tmp_path, yaml_text, needle):
    p = tmp_path / "bad.yaml"
    p.write_text(yaml_text)
    with pytest.raises(RewardlabError) as e:
        load_config(p)
    assert str(p) in str(e.value)
    assert needle in str(e.value)


def test_extends_lays_a_variant_on_its_base(tmp_path):
    (tmp_path / "base.yaml").write_text(
        "seed: 4\npretrain:\n  steps: 900\n  batch_size: 32\n  model: {hidden_size: 64, num_layers: 2}\n"
        "methods: [ppo, bon]\n"
    )
    (tmp_path / "sub").mkdir()
    variant = tmp_path / "sub" / "fast.yaml"
    variant.write_text(
        "extends: ../base.yaml\npretrain:\n  steps: 300\n  model: {num_layers: 1}\nmethods: [ppo]\n"
    )
    cfg = load_config(variant, ["pretrain.batch_size=16"])
    assert cfg.seed == 4 and cfg.pretrain.steps == 300  # the base's value, the variant's change
    assert (cfg.pretrain.model.hidden_size, cfg.pretrain.model.num_layers) == (64, 1)  # mappings merge
    assert cfg.methods == ["ppo"]  # lists replace
    assert cfg.pretrain.batch_size == 16  # --set still applies last


def test_extends_errors_name_the_file(tmp_path):
    a, b = tmp_path / "a.yaml", tmp_path / "b.yaml"
    a.write_text("extends: b.yaml\n")
    b.write_text("extends: a.yaml\n")
    with pytest.raises(RewardlabError, match="cycle"):
        load_config(a)
    a.write_text("extends: missing.yaml\n")
    with pytest.raises(RewardlabError, match=r"missing\.yaml"):
        load_config(a)
    a.write_text("extends: [b.yaml]\n")
    with pytest.raises(RewardlabError, match=re.escape(f"{a}: extends must be")):
        load_config(a)
    b.write_text("pretrain:\n  stepz: 1\n")
    a.write_text("extends: b.yaml\n")
    with pytest.raises(RewardlabError, match=r"pretrain\.stepz: unknown key"):
        load_config(a)


def test_bad_override_and_missing_file(tmp_path):
    with pytest.raises(RewardlabError, match="expected key=value"):
        load_config(None, ["pretrain.steps"])
    with pytest.raises(RewardlabError, match="not found"):
        load_config(tmp_path / "missing.yaml")


def test_cli_reports_errors_without_traceback(tmp_path, capsys):
    p = tmp_path / "bad.yaml"
    p.write_text("sft:\n  batch_size: zero\n")
    assert main(["sft", str(p), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "sft.batch_size" in err and "Traceback" not in err


def test_cli_missing_stage_input_is_a_clear_error(tmp_path, capsys):
    assert main(["sft", "--run-dir", str(tmp_path / "r"), "--quiet"]) == 2
    assert "base model" in capsys.readouterr().err


def test_cli_help_everywhere(capsys):
    for cmd in ([], ["pretrain"], ["sft"], ["label"], ["reward"], ["run"]):
        with pytest.raises(SystemExit) as e:
            main([*cmd, "--help"])
        assert e.value.code == 0
    assert "--set" in capsys.readouterr().out
