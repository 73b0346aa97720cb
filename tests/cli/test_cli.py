"""`depthid` (cli/): each subcommand's help, that each reaches the function that does its work,
that no help imports torch, and that the older spellings (`python -m models.pull`, ...) still
run. `depthid predict` against a server: tests/e2e/test_predict_cli.py."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import tomllib
from collections.abc import Iterator
from pathlib import Path

import pytest

import cli
from cli import serve
from models import build, full_store, manifest, pull
from models.store import install
from settings import PROJECT_ROOT, get_settings
from tests.support.helpers import free_port

# Each command, as typed after `depthid`, and what its help must name.
HELP = {
    "": ["serve", "predict", "keys", "pull", "models", "loadtest"],
    "serve": ["--host", "--port", "--profile"],
    "predict": ["model", "--input", "--output", "--url", "--api-key", "--async", "--timeout"],
    "keys": ["new", "add", "check"],
    "keys new": ["--name", "--models", "--credits", "--requests-per-minute"],
    "keys add": ["--file", "--name", "--credits"],
    "keys check": ["--file"],
    "pull": ["--runner", "--only", "--cache-dir", "--force"],
    "models": ["build", "full-store", "list"],
    "models build": ["--only"],
    "models full-store": ["--scale", "--only", "--force"],
    "models list": ["--profile"],
    "loadtest": ["--profile", "--host", "--run-time", "--users", "--out", "--api-key"],
}
# The older spellings: the same `main`, under its module's own name.
OLD_MODULES = [
    "models.pull",
    "models.build",
    "models.full_store",
    "gateway.tenancy.api_keys",
    "loadtests.run",
]


@pytest.fixture
def fresh_settings() -> Iterator[None]:
    """get_settings() is cached: clear it around tests that change the environment."""
    get_settings.cache_clear()
    yield
    get_settings.cache_clear()


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    """`depthid *argv` in this process: its exit status, stdout and stderr."""
    try:
        code = cli.main(list(argv))
    except SystemExit as exc:  # argparse: --help, usage errors
        code = exc.code
    out, err = capsys.readouterr()
    return code, out, err


def leaf_commands(commands: dict[str, cli.Command] = cli.COMMANDS, prefix: str = "") -> list[str]:
    """Every runnable command, as typed after `depthid` ("models build", ...)."""
    names = []
    for name, command in commands.items():
        if command.subcommands:
            names += leaf_commands(command.subcommands, f"{prefix}{name} ")
        else:
            names.append(f"{prefix}{name}")
    return names


# --- help -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("command", list(HELP), ids=lambda c: c or "depthid")
def test_every_help_says_what_it_takes(command: str, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, *command.split(), "--help")
    assert code == 0
    assert out.startswith(f"usage: {' '.join(['depthid', *command.split()])} ")
    for option in HELP[command]:
        assert re.search(rf"(^|\W){re.escape(option)}(\W|$)", out), (command, option)


def test_every_command_is_in_the_help_table() -> None:
    assert set(leaf_commands()) <= set(HELP)


def test_no_help_imports_torch() -> None:
    """`depthid --help` and every command's help, in one fresh interpreter."""
    code = f"""
import contextlib, io, json, sys
import cli
for command in {list(HELP)!r}:
    with contextlib.redirect_stdout(io.StringIO()), contextlib.suppress(SystemExit):
        cli.main([*command.split(), "--help"])
heavy = sorted(m for m in sys.modules if m.split(".")[0] in ("torch", "diffusers", "transformers"))
print(json.dumps(heavy))
"""
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=PROJECT_ROOT, capture_output=True, text=True, check=True
    )
    assert json.loads(result.stdout.strip().splitlines()[-1]) == []


def test_no_command_or_an_unknown_one_names_the_commands(capsys) -> None:
    for argv in ([], ["bogus"], ["models"], ["models", "bogus"]):
        code, _, err = run(capsys, *argv)
        assert code == 2, argv
        assert "COMMAND" in err, argv
    assert "choose from 'serve', 'predict'" in run(capsys, "bogus")[2]
    assert "choose from 'build', 'full-store', 'list'" in run(capsys, "models", "bogus")[2]


# --- each command reaches its module's work -------------------------------------------------------


def test_keys_add_and_check_a_keys_file(tmp_path: Path, capsys) -> None:
    path = tmp_path / "api-keys.json"
    code, out, err = run(capsys, "keys", "add", "--file", str(path), "--name", "team-a")
    assert code == 0, err
    assert f"Added to {path} (1 keys)" in out
    assert [entry["name"] for entry in json.loads(path.read_text())["keys"]] == ["team-a"]
    assert run(capsys, "keys", "check", "--file", str(path))[:2] == (0, f"{path}: ok, 1 keys\n")
    code, _, err = run(capsys, "keys", "new")
    assert code == 2 and err.startswith("usage: depthid keys new ")


def test_models_list_shows_the_store(tmp_path: Path, monkeypatch, fresh_settings, capsys) -> None:
    monkeypatch.setenv("DEPTHID_MODEL_STORE", str(tmp_path))
    with install(tmp_path / "tiny" / "sd15-base", source="a test") as staging:
        (staging / "weights.bin").write_bytes(b"x" * 2_000_000)
    code, out, _ = run(capsys, "models", "list", "--profile", "tiny")
    assert code == 0
    assert f"tiny: {tmp_path / 'tiny'}" in out and "full:" not in out
    assert re.search(r"sd15-base +complete, 2\.0 MB, from a test", out)
    assert re.search(r"sdxl-vae +missing", out)
    assert f"1 of {len(manifest.TINY_MODELS)} complete; `depthid models build`" in out
    assert "0 of 11 complete; `depthid pull`" in run(capsys, "models", "list")[1]


def test_models_build_builds_the_tiny_models(monkeypatch, fresh_settings, capsys) -> None:
    built = []
    monkeypatch.setenv("DEPTHID_PROFILE", "tiny")
    monkeypatch.setattr(build, "build_tiny", lambda settings, names: built.append(names))
    assert run(capsys, "models", "build", "--only", "sd15-base", "--only", "sdxl-vae")[0] == 0
    assert built == [["sd15-base", "sdxl-vae"]]


def test_models_full_store_writes_the_full_store(tmp_path, monkeypatch, fresh_settings, capsys):
    calls = []
    monkeypatch.setenv("DEPTHID_MODEL_STORE", str(tmp_path))
    monkeypatch.setattr(full_store, "write_full_store", lambda *a, **kw: calls.append((a, kw)))
    assert run(capsys, "models", "full-store", "--scale", "real", "--only", "sdxl-vae")[0] == 0
    assert calls == [((tmp_path, "real"), {"names": ["sdxl-vae"], "force": False})]


def test_pull_pulls_the_runners_models(monkeypatch, fresh_settings, capsys) -> None:
    pulled = []
    monkeypatch.delenv("DEPTHID_PULL_RUNNERS", raising=False)
    monkeypatch.setattr(pull, "pull", lambda settings, names, **_: pulled.append(names) or {})
    code, out, _ = run(capsys, "pull", "--runner", "instantid")
    assert code == 0
    assert sorted(pulled[0]) == sorted(manifest.RUNNER_MODELS["instantid"])
    assert f"all {len(pulled[0])} models are in" in out


def test_predict_says_when_the_server_is_unreachable(capsys) -> None:
    url = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    code, _, err = run(capsys, "predict", "instantid", "-i", "prompt=x", "--url", url)
    assert code == 1
    assert f"error: cannot reach {url}" in err and "make serve" in err


def test_loadtest_runs_the_release_gate(tmp_path: Path, capsys) -> None:
    missing = tmp_path / "absent.toml"
    code, _, err = run(capsys, "loadtest", "--scenario", str(missing), "--out", str(tmp_path))
    assert code == 2  # loadtests/run.py: the run could not be made
    assert str(missing) in err


def test_a_command_outside_the_installed_packages_says_so(capsys) -> None:
    command = cli.Command("a test", "no_such_folder.run", checkout_only=True)
    assert cli.run(command, [], "depthid x") == 2
    assert "`depthid x` runs from a DepthID checkout (no_such_folder/" in capsys.readouterr().err


def test_serve_builds_the_tiny_models_and_becomes_bentoml(
    monkeypatch, fresh_settings, capsys
) -> None:
    built, execs = [], []
    for name in ("PROFILE", "DEVICE", "LOG_FORMAT", "HOST", "PORT"):
        monkeypatch.delenv(f"DEPTHID_{name}", raising=False)
    monkeypatch.setattr(build, "build_tiny", lambda settings: built.append(settings.profile))
    monkeypatch.setattr(serve.os, "execve", lambda *args: execs.append(args))
    assert run(capsys, "serve", "--port", "3210")[0] == 0
    assert built == ["tiny"]
    [(program, command, env)] = execs
    assert program == command[0] == serve.BENTOML
    assert command[1:] == ["serve", "service:Gateway", "--host", "127.0.0.1", "--port", "3210",
                           "--working-dir", str(PROJECT_ROOT)]  # fmt: skip
    assert env["DEPTHID_PROFILE"] == "tiny" and env["DEPTHID_DEVICE"] == "cpu"
    assert env["DEPTHID_LOG_FORMAT"] == "text" and env["BENTOML_DO_NOT_TRACK"] == "true"
    assert Path(env["BENTOML_HOME"]).name.startswith("depthid-bentoml-")  # a home of its own
    os.rmdir(env["BENTOML_HOME"])

    # full: nothing to build, the device and log format the environment's.
    monkeypatch.setenv("DEPTHID_LOG_FORMAT", "json")
    assert run(capsys, "serve", "--profile", "full")[0] == 0
    assert built == ["tiny"]
    env = execs[1][2]
    assert env["DEPTHID_PROFILE"] == "full" and "DEPTHID_DEVICE" not in env
    assert env["DEPTHID_LOG_FORMAT"] == "json"
    os.rmdir(env["BENTOML_HOME"])


# --- the older spellings --------------------------------------------------------------------------


@pytest.mark.parametrize("module", OLD_MODULES)
def test_the_old_module_spelling_still_runs(module: str) -> None:
    done = subprocess.run(
        [sys.executable, "-m", module, "--help"],
        cwd=PROJECT_ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith(f"usage: python -m {module} ")


def test_python_m_cli_is_depthid() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "cli", "models", "--help"],
        cwd=PROJECT_ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0 and done.stdout.startswith("usage: depthid models ")


def test_the_installed_scripts_run_the_commands_main() -> None:
    scripts = tomllib.loads((PROJECT_ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    assert scripts["depthid"] == "cli:main"
    # The older script names: the same functions as the subcommands.
    models = cli.COMMANDS["models"].subcommands
    assert scripts["depthid-pull"] == f"{cli.COMMANDS['pull'].module}:main"
    assert scripts["depthid-build-tiny"] == f"{models['build'].module}:main"


def test_the_makefile_runs_commands_that_exist() -> None:
    makefile = (PROJECT_ROOT / "Makefile").read_text()
    runs = re.findall(r"\$\(BIN\)/depthid ((?:[a-z][a-z-]* ?)+)", makefile)
    assert len(runs) >= 5
    for words in runs:
        commands, command = cli.COMMANDS, None
        for word in words.split():
            command = commands[word]
            commands = command.subcommands
        assert command.module, words  # a command, not a group


def test_getting_started_lists_every_command() -> None:
    text = (PROJECT_ROOT / "docs" / "getting-started.md").read_text()
    for command in leaf_commands():
        assert f"depthid {command}" in text, command
