"""The building machine's pip settings, handed to an image build without baking them in.

`make image` installs the same pinned wheels as `make install`, so the build's pip must see what
this machine's pip sees: its configuration files and PIP_* variables (index URLs, find-links
folders holding the CPU torch wheel, constraint files) and the certificate bundle a proxy may
require. None of it belongs in the image. This writes the merged settings (`pip config list`,
later sources winning, as pip reads them) to one pip.conf, and prints the engine options that
carry it into the build's RUN steps only:

- `--secret id=pip.conf,src=<the file>`: the Containerfile mounts it for the install step;
- `--volume <path>:<path>:ro` for every local path the settings name (the certificate bundle,
  find-links folders, `file://` indexes with the files they link to, constraint files), so the
  same settings work unchanged inside the build.

    python container/pip_settings.py OUT_DIR   # one engine option per line, on stdout

Volumes during a build are podman's (`podman build --volume`); docker's build has none, so with
docker a setting that names a local path is an error that says so.
"""

from __future__ import annotations

import argparse
import ast
import subprocess
import sys
from pathlib import Path
from urllib.parse import urlparse

# Settings whose values are local paths or URLs, space-separated when there are several.
PATH_KEYS = {"cert", "client-cert", "constraint", "requirement", "find-links"}
INDEX_KEYS = {"index-url", "extra-index-url"}


def read_settings() -> dict[str, dict[str, str]]:
    """{section: {key: value}} from `pip config list`: files, then PIP_* variables (`:env:`)."""
    listed = subprocess.run(
        [sys.executable, "-m", "pip", "config", "list"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    sections: dict[str, dict[str, str]] = {}
    for line in listed.splitlines():
        name, _, value = line.partition("=")
        section, _, key = name.rpartition(".")
        # `:env:` holds the PIP_* variables, which apply to every command, as [global] does.
        section = "global" if section == ":env:" else section
        sections.setdefault(section, {})[key] = ast.literal_eval(value)
    return sections


def local_paths(key: str, value: str) -> list[Path]:
    """The local files and folders a setting names (what the build must see at the same path)."""
    found = []
    for item in value.split():
        url = urlparse(item)
        if url.scheme == "file":
            path = Path(url.path)
        elif url.scheme == "" and (key in PATH_KEYS):
            path = Path(item)
        else:
            continue  # an http(s) index or link: reached over the network
        if key in INDEX_KEYS and path.name == "simple":
            # A local index's pages link to its files beside `simple/` (../../files/...).
            path = path.parent
        found.append(path)
    return found


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("out_dir", type=Path, help="where to write pip.conf")
    parser.add_argument("--engine", default="podman", help="podman or docker")
    args = parser.parse_args(argv)

    sections = read_settings()
    args.out_dir.mkdir(parents=True, exist_ok=True)
    conf = args.out_dir / "pip.conf"
    conf.write_text(
        "".join(
            f"[{section}]\n" + "".join(f"{key} = {value}\n" for key, value in items.items())
            for section, items in sections.items()
        )
    )
    mounts = sorted(
        {
            path
            for items in sections.values()
            for key, value in items.items()
            if key in PATH_KEYS | INDEX_KEYS
            for path in local_paths(key, value)
        }
    )
    missing = [path for path in mounts if not path.exists()]
    if missing:
        print(f"pip_settings: pip's settings name missing paths: {missing}", file=sys.stderr)
        return 1
    if mounts and args.engine != "podman":
        print(
            f"pip_settings: pip's settings name local paths ({', '.join(map(str, mounts))}) that "
            f"only podman can mount into a build; use ENGINE=podman",
            file=sys.stderr,
        )
        return 1
    print(f"--secret=id=pip.conf,src={conf.resolve()}")
    for path in mounts:
        print(f"--volume={path}:{path}:ro")
    return 0


if __name__ == "__main__":
    sys.exit(main())
