"""docs/configuration.md and docs/metrics.md are generated from the code (docs/generate.py,
`make docs`): these tests fail while either file says something the code no longer does."""

from __future__ import annotations

import re

from docs import generate
from gateway.metrics import METRICS
from settings import PROJECT_ROOT, SECTIONS, Settings


def test_the_generated_references_are_up_to_date():
    stale = generate.stale()
    assert not stale, f"{', '.join(f'docs/{n}' for n in stale)} stale: run `make docs`"


def test_the_check_fails_on_a_stale_file(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(generate, "DOCS", tmp_path)
    assert generate.main([]) == 0
    assert generate.main(["--check"]) == 0
    text = (tmp_path / "configuration.md").read_text()
    (tmp_path / "configuration.md").write_text(text.replace("`3000`", "`3001`"))
    assert generate.main(["--check"]) == 1
    assert "docs/configuration.md is stale: run `make docs`" in capsys.readouterr().err


def test_every_setting_is_described_once_in_its_section():
    text = generate.configuration()
    for name, field in Settings.model_fields.items():
        assert field.description, f"settings.{name} has no description"
        rows = [
            line for line in text.splitlines() if line.startswith(f"| `DEPTHID_{name.upper()}`")
        ]
        assert len(rows) == 1, name
    headings = re.findall(r"^## (.+)$", text, re.MULTILINE)
    assert headings == [title for title, _, _ in SECTIONS]


def test_each_section_title_heads_its_first_field_in_settings_py():
    """The titles are also the heading comments of the class, so the two cannot drift."""
    source = (PROJECT_ROOT / "settings.py").read_text()
    for title, first, _ in SECTIONS:
        assert re.search(rf"# --- {re.escape(title)} -+\n    {first}:", source), title


def test_types_bounds_and_defaults_are_the_fields_own():
    rows = {
        line.split(" | ")[0].strip("| `"): line.split(" | ")
        for line in generate.configuration().splitlines()
        if line.startswith("| `DEPTHID_")
    }
    assert rows["DEPTHID_PORT"][1:3] == ["integer 1..65535", "`3000`"]
    assert rows["DEPTHID_OUTPUT_LONG_SIDE"][1:3] == ["integer 8..4096, or unset", "unset"]
    assert rows["DEPTHID_PROFILE"][1:3] == ["one of `tiny`, `full`", "`tiny`"]
    assert rows["DEPTHID_MODEL_STORE"][2] == "`./.models`"
    assert rows["DEPTHID_SAFETY_THRESHOLDS"][2] == "`0.1,0.2,0.35,0.5,0.7,0.9`"
    assert rows["DEPTHID_GENERATION_TIMEOUT_S"][1] == "number > 0"


def test_every_metric_is_in_the_reference_as_exposed():
    text = generate.metrics()
    for name, spec in METRICS.items():
        exposed = f"{name}_total" if spec.kind == "Counter" else name
        [row] = [line for line in text.splitlines() if line.startswith(f"| `{exposed}` |")]
        assert spec.help in row and spec.kind.lower() in row
        for label in spec.labels:
            assert f"`{label}`" in row
