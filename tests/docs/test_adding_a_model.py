"""docs/adding-a-model.md matches the code: the code files its table lists for a new model are
found for every model there is, at most six of them (and settings.py for a new runner), and no
other code file names a model, its runner or its job type, but those the page names as
per-model by nature (benchmarks, the full store's writers). A list of models written anywhere
else fails here, naming the file."""

from __future__ import annotations

import fnmatch
import functools
import inspect
import io
import os
import re
import tokenize
from collections.abc import Callable
from pathlib import Path

import pytest

from gateway.schemas.registry import MODEL_SPECS, ModelSpec
from models.manifest import CHECKPOINTS, RUNNER_MODELS
from settings import PROJECT_ROOT, RUNNERS, Settings

PAGE = (PROJECT_ROOT / "docs" / "adding-a-model.md").read_text()
TESTS = Path("tests")


def table_files(section: str) -> list[str]:
    """The files of the first column of the page's table between its `section` markers."""
    body = PAGE.split(f"<!-- {section}: begin -->")[1].split(f"<!-- {section}: end -->")[0]
    return re.findall(r"^\| `([^`]+)` \|", body, re.MULTILINE)


def named_between(first_heading: str, next_heading: str) -> set[str]:
    """The code files the page names (in backticks) from one heading to the next."""
    body = PAGE.split(f"\n## {first_heading}\n")[1].split(f"\n## {next_heading}\n")[0]
    return set(re.findall(r"`([\w/]+\.py)`", body))


CODE_FILES = table_files("code files")
NEW_RUNNER_FILES = table_files("new runner")
PER_MODEL_BY_NATURE = named_between("The real architecture, without real weights", "Tests")


def source(obj: object) -> str:
    return Path(inspect.getsourcefile(obj)).relative_to(PROJECT_ROOT).as_posix()


def runner_module(spec: ModelSpec) -> str:
    return source(spec.runner.inner)


def pipeline_modules(spec: ModelSpec) -> set[str]:
    """The pipeline modules the runner's service imports (in its `__init__`)."""
    text = (PROJECT_ROOT / runner_module(spec)).read_text()
    return {
        f"runners/{name}.py" for name in re.findall(r"from runners\.(\w+_pipeline) import", text)
    }


def tiny_builder_modules(spec: ModelSpec) -> set[str]:
    """The modules that build the tiny copies of the checkpoints only this model's runner loads."""
    own = [
        name
        for name in RUNNER_MODELS[spec.runner.name]
        if sum(name in names for names in RUNNER_MODELS.values()) == 1
    ]
    return {
        CHECKPOINTS[name].tiny_builder.split(":")[0].replace(".", "/") + ".py"
        for name in own
        if CHECKPOINTS[name].tiny_builder is not None
    }


# Where each file of the page's table is, for a given model: how the code finds it.
FOUND_BY: dict[str, Callable[[ModelSpec], set[str]]] = {
    "gateway/schemas/<model>.py": lambda spec: {source(spec.request)},
    "gateway/schemas/registry.py": lambda spec: {source(ModelSpec)},
    "runners/<runner>.py": lambda spec: {runner_module(spec)},
    "runners/<name>_pipeline.py": pipeline_modules,
    "models/manifest.py": lambda spec: {"models/manifest.py"},
    "models/tiny_<name>.py": tiny_builder_modules,
}


def model_files(spec: ModelSpec) -> dict[str, set[str]]:
    """The page's files for one model: {the page's path: the files it is for this model}."""
    return {pattern: FOUND_BY[pattern](spec) for pattern in CODE_FILES}


def code_files() -> list[str]:
    """Every code file of the project but the tests: Python, the Makefile, the Containerfile
    (hidden folders such as .venv and .models, and caches, are not walked)."""
    found = []
    for folder, dirs, files in os.walk(PROJECT_ROOT):
        relative = Path(folder).relative_to(PROJECT_ROOT)
        dirs[:] = [d for d in dirs if not d.startswith((".", "__")) and relative / d != TESTS]
        for name in files:
            if name.endswith(".py") or name in ("Makefile", "Containerfile"):
                found.append((relative / name).as_posix())
    return sorted(found)


@functools.cache
def names_in(file: str) -> set[str]:
    """What a code file names: Python identifiers and whole string literals (not comments nor
    prose: a docstring or description naming a model in a sentence is no list of models); in
    a Makefile or Containerfile, the words of lines that are not comments."""
    text = (PROJECT_ROOT / file).read_text()
    if not file.endswith(".py"):
        lines = (line for line in text.splitlines() if not line.lstrip().startswith("#"))
        return {word for line in lines for word in re.split(r"[\s\"'=,;:()\[\]{}/]+", line)}
    return python_names(text)


def python_names(text: str) -> set[str]:
    found = set()
    for token in tokenize.generate_tokens(io.StringIO(text).readline):
        if token.type == tokenize.NAME:
            found.add(token.string)
        elif token.type == tokenize.STRING and token.string[0] in "'\"":  # not f- or b-strings
            found.add(token.string.strip("'\""))
    return found


def runner_vocabulary(runner: str) -> set[str]:
    """What names the runner or a model it serves: its name, its service class, its job types,
    its models' names."""
    specs = [spec for spec in MODEL_SPECS.values() if spec.runner.name == runner]
    return {
        runner,
        *(spec.runner.inner.__name__ for spec in specs),
        *(spec.job.__name__ for spec in specs),
        *(spec.name for spec in specs),
    }


RUNNERS_SERVED = sorted({spec.runner.name for spec in MODEL_SPECS.values()})


def test_the_page_lists_at_most_six_code_files_and_settings_for_a_new_runner():
    assert 0 < len(CODE_FILES) <= 6, CODE_FILES
    assert NEW_RUNNER_FILES == ["settings.py"]
    assert set(CODE_FILES) == set(FOUND_BY), "a row of the page's table is not known here"


@pytest.mark.parametrize("model", list(MODEL_SPECS))
def test_every_model_has_each_file_the_page_lists_where_it_says(model):
    for pattern, files in model_files(MODEL_SPECS[model]).items():
        assert files, f"{model}: no {pattern}"
        for file in files:
            assert fnmatch.fnmatch(file, re.sub(r"<\w+>", "*", pattern)), (model, pattern, file)
            assert (PROJECT_ROOT / file).is_file(), file


def test_a_new_runners_settings_are_its_url_and_max_batch_size():
    """settings.py's part for a runner: its URL (Settings.runner_url) and its max batch size."""
    assert sorted(RUNNERS) == RUNNERS_SERVED
    settings = Settings(sd15_runner_url="http://a", flux_runner_url="http://b")
    urls = {runner: settings.runner_url(runner) for runner in RUNNERS}
    assert sorted(url for url in urls.values() if url) == ["http://a", "http://b"]
    fields = Settings.model_fields
    assert len([f for f in fields if f.endswith("_runner_url")]) == len(RUNNERS)
    assert len([f for f in fields if f.endswith("_max_batch_size")]) == len(RUNNERS)


def test_the_files_named_per_model_by_nature_exist():
    assert "models/full_store.py" in PER_MODEL_BY_NATURE
    for file in PER_MODEL_BY_NATURE:
        assert (PROJECT_ROOT / file).is_file(), file


@pytest.mark.parametrize("runner", RUNNERS_SERVED)
def test_no_code_file_but_the_listed_ones_names_a_model_its_runner_or_its_job(runner):
    allowed = set(NEW_RUNNER_FILES) | PER_MODEL_BY_NATURE
    for spec in MODEL_SPECS.values():
        if spec.runner.name == runner:
            allowed.update(*model_files(spec).values())
    vocabulary = runner_vocabulary(runner)
    knowing = {
        file: sorted(names_in(file) & vocabulary)
        for file in code_files()
        if file not in allowed and names_in(file) & vocabulary
    }
    assert knowing == {}, (
        f"these code files name {runner} or its models; docs/adding-a-model.md does not list "
        "them: read the registry or the manifest there instead, or add them to the page"
    )


def test_the_check_finds_a_list_of_models():
    """The scan sees a model named in code, not in a comment or a sentence."""
    code = 'RUNNER_OF = {"flux-depth-pro": "flux_depth"}  # sd1.5-controlnet-depth\n'
    found = python_names(code)
    assert found & runner_vocabulary("flux_depth") == {"flux-depth-pro", "flux_depth"}
    assert not found & runner_vocabulary("sd15_depth")
    job = '"""Builds a SD15DepthJob."""\nfrom runners.sd15_depth import SD15DepthJob\n'
    assert python_names(job) & runner_vocabulary("sd15_depth") == {"sd15_depth", "SD15DepthJob"}
