"""Constitution files (issue 20): the shipped ones load; a bad file is an error naming the file and the field."""

from __future__ import annotations

import random

import pytest
import yaml

from rewardlab.feedback.constitution import load_constitution
from rewardlab.utils import RewardlabError

GOOD = {
    "name": "t",
    "principles": [
        {
            "name": "honest",
            "comparison": "which is honest ?",
            "critique": "is it honest ?",
            "revision": "fix it .",
        },
        {
            "name": "short",
            "comparison": "which is short ?",
            "critique": "is it long ?",
            "revision": "shorten .",
        },
    ],
}


def _write(tmp_path, data) -> str:
    p = tmp_path / "c.yaml"
    p.write_text(yaml.safe_dump(data))
    return str(p)


@pytest.mark.parametrize("name", ["arithmetic", "dialogue"])
def test_shipped_constitutions_load(name):
    c = load_constitution(f"configs/constitutions/{name}.yaml")
    assert len(c.principles) == 3 and c.options == ("A", "B")
    text = c.comparison_prompt(c.principles[0], "Q?", "first", "second")
    assert "Q?" in text and text.index("first") < text.index("second")
    assert "resp" in c.revision_prompt(c.principles[0], "Q?", "resp", "crit")


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda d: d["principles"][0].pop("comparison"), "principles.0.comparison: Field required"),
        (lambda d: d.update(principls=[]), "principls: unknown key"),
        (
            lambda d: d.update(comparison_template="{principle} {prompt} {a}"),
            "comparison_template: missing placeholder",
        ),
        (lambda d: d.update(critique_template="{request} {prompt} {response} {x}"), "unknown placeholder"),
        (lambda d: d.update(options=["A", "A"]), "options: .*distinct"),
        (lambda d: d.update(selection="fixed", fixed="nope"), "fixed: 'nope' is not one of"),
        (lambda d: d["principles"][1].update(name="honest"), "duplicate names"),
        (lambda d: d.update(principles=[]), "principles: List should have at least 1 item"),
    ],
)
def test_bad_constitution_names_file_and_field(tmp_path, change, message):
    data = yaml.safe_load(yaml.safe_dump(GOOD))
    change(data)
    path = _write(tmp_path, data)
    with pytest.raises(RewardlabError, match=message) as e:
        load_constitution(path)
    assert str(e.value).startswith(path)


def test_principle_selection_is_seeded_or_fixed(tmp_path):
    c = load_constitution(_write(tmp_path, GOOD))
    picks = {c.pick(random.Random(s)).name for s in range(20)}
    assert picks == {"honest", "short"}
    fixed = load_constitution(_write(tmp_path, {**GOOD, "selection": "fixed", "fixed": "short"}))
    assert {fixed.pick(random.Random(s)).name for s in range(5)} == {"short"}
    with pytest.raises(RewardlabError, match="not found"):
        load_constitution(tmp_path / "missing.yaml")
