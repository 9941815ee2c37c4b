"""The README's promises that a test can hold it to: its demo spec and its settings table."""

from __future__ import annotations

import json
import re
from pathlib import Path

from core.spec import JobSpec
from store.settings import Settings

ROOT = Path(__file__).resolve().parents[2]
README = (ROOT / "README.md").read_text()


def test_demo_spec_is_valid_and_is_the_one_the_readme_shows() -> None:
    demo = json.loads((ROOT / "examples" / "digits-e2kd.json").read_text())
    spec = JobSpec.model_validate(demo)
    assert spec.dataset.name == "digits" and spec.dataset.image_size == 32
    assert spec.method == "e2kd" and spec.loss.explanation.weight > 0
    shown = [json.loads(block) for block in re.findall(r"```json\n(.*?)```", README, flags=re.S)]
    assert demo in shown


def test_every_setting_is_documented_in_the_readme_table() -> None:
    documented = set(re.findall(r"^\| `([A-Z_]+)` \|", README, flags=re.M))
    variables = {field.alias for field in Settings.model_fields.values()}
    assert variables == documented
