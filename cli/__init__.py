"""`depthid`: DepthID's one command line, a subcommand per task.

    depthid serve                          the Gateway and runners here (cli/serve.py)
    depthid predict MODEL -i field=value   one generation against a server (cli/predict.py)
    depthid keys new|add|check             API keys (gateway/tenancy/api_keys.py)
    depthid pull                           the full profile's real weights (models/pull.py)
    depthid models build|full-store|list   the model store (models/: build.py, full_store.py,
                                           store.py)
    depthid loadtest                       load test and release gate (loadtests/run.py)

Each subcommand's options and work live in the module named beside it, as `main(argv, prog)`;
this one only picks the module, and imports it only then, so that `depthid --help` answers at
once and no help imports torch. The older spellings (`python -m models.pull`, ...) run the same
`main`.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from dataclasses import dataclass, field
from pathlib import Path

# The folder holding cli/: the checkout, in an editable install (`make install`).
CHECKOUT = Path(__file__).resolve().parent.parent
DESCRIPTION = "DepthID: serve it, call it, manage its keys, weights and load tests."


@dataclass(frozen=True)
class Command:
    help: str
    module: str = ""  # the module whose main(argv, prog) runs it
    subcommands: dict[str, Command] = field(default_factory=dict)  # or a group of commands
    # Its module is in the checkout, not among the installed packages (loadtests/ reads
    # tests/support/ to serve a local instance).
    checkout_only: bool = False


COMMANDS: dict[str, Command] = {
    "serve": Command(
        "serve the Gateway and every runner here (what `make serve` runs)", "cli.serve"
    ),
    "predict": Command("run one generation against a server, write the image(s)", "cli.predict"),
    "keys": Command("make API keys (new, add) and check a keys file", "gateway.tenancy.api_keys"),
    "pull": Command("download the full profile's real weights into the store", "models.pull"),
    "models": Command(
        "the local model store: build the tiny models, write the full store, list it",
        subcommands={
            "build": Command("build the tiny profile's random-weight models", "models.build"),
            "full-store": Command(
                "write the full profile's store with random weights, without the hub",
                "models.full_store",
            ),
            "list": Command(
                "list each profile's models in the store, complete or not", "models.store"
            ),
        },
    ),
    "loadtest": Command(
        "run the load test and release gate against a server, or a tiny one it serves",
        "loadtests.run",
        checkout_only=True,
    ),
}


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    return dispatch(COMMANDS, argv, "depthid", DESCRIPTION)


def dispatch(commands: dict[str, Command], argv: list[str], prog: str, description: str) -> int:
    """Run the command `argv` names with the rest of `argv`; else the help, or a usage error."""
    if argv and argv[0] in commands:
        name, rest = argv[0], argv[1:]
        command = commands[name]
        if command.subcommands:
            return dispatch(command.subcommands, rest, f"{prog} {name}", command.help)
        return run(command, rest, f"{prog} {name}")
    parser = argparse.ArgumentParser(
        prog=prog,
        description=description,
        epilog=f"`{prog} COMMAND --help` says what each command takes.",
    )
    choices = parser.add_subparsers(title="commands", metavar="COMMAND", required=True)
    for name, command in commands.items():
        choices.add_parser(name, help=command.help)
    parser.parse_args(argv)  # prints the help (exit 0) or names the commands (exit 2)
    parser.error(f"name a command first: {', '.join(commands)}")


def run(command: Command, argv: list[str], prog: str) -> int:
    if command.checkout_only and str(CHECKOUT) not in sys.path:
        sys.path.insert(0, str(CHECKOUT))
    top = command.module.split(".")[0]
    try:
        module = importlib.import_module(command.module)
    except ModuleNotFoundError as exc:
        if exc.name != top:
            raise
        print(
            f"error: `{prog}` runs from a DepthID checkout ({top}/ is not installed): "
            "install it with `make install`, which installs the checkout in place",
            file=sys.stderr,
        )
        return 2
    return module.main(argv, prog=prog)
