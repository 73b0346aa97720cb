"""A Hugging Face Hub stand-in on 127.0.0.1, for the puller's tests (no hub is reachable here).

It speaks just enough of the hub's HTTP API for huggingface_hub pointed at it (HF_ENDPOINT, or
`endpoint=`): model info with file sizes (`HfApi.model_info(files_metadata=True)`) and file
downloads (`hf_hub_download`: HEAD for the metadata, then GET), including the error headers from
which huggingface_hub raises GatedRepoError, RepositoryNotFoundError and RevisionNotFoundError.
"""

from __future__ import annotations

import hashlib
import json
import re
import threading
from collections import Counter
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import unquote, urlsplit

# The one token that has accepted the gated repositories' licences.
ACCEPTED_TOKEN = "hf_standin_accepted"

INFO_PATH = re.compile(r"/api/models/([^/]+/[^/]+)/revision/([^/]+)")
FILE_PATH = re.compile(r"/([^/]+/[^/]+)/resolve/([^/]+)/(.+)")


@dataclass
class Repo:
    sha: str
    files: dict[str, bytes]
    gated: bool = False
    # Listed by model info but answering 404 when downloaded: a pull that fails half-way.
    broken: set[str] = field(default_factory=set)


class HubStandIn:
    """`with HubStandIn(repos) as hub:` serves `repos` at `hub.url` on a free port."""

    def __init__(self, repos: dict[str, Repo]) -> None:
        self.repos = repos
        self.downloads: Counter[tuple[str, str]] = Counter()  # GETs of files' bytes
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(self))
        self._server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    def __enter__(self) -> HubStandIn:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join()


def _handler(hub: HubStandIn) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, format: str, *args: object) -> None:  # quiet test output
            pass

        def do_GET(self) -> None:
            self._answer(send_body=True)

        def do_HEAD(self) -> None:
            self._answer(send_body=False)

        def _answer(self, send_body: bool) -> None:
            path = unquote(urlsplit(self.path).path)
            if match := INFO_PATH.fullmatch(path):
                repo = self._repo(match[1], match[2])
                if repo is not None:
                    siblings = [
                        {"rfilename": name, "size": len(content)}
                        for name, content in repo.files.items()
                    ]
                    info = {"id": match[1], "sha": repo.sha, "siblings": siblings}
                    self._send(200, json.dumps(info).encode(), {}, send_body)
            elif match := FILE_PATH.fullmatch(path):
                repo = self._repo(match[1], match[2])
                if repo is None:
                    return
                name = match[3]
                if name not in repo.files or name in repo.broken:
                    self._error(404, "EntryNotFound", f"{name} does not exist", repo.sha)
                    return
                content = repo.files[name]
                headers = {
                    "X-Repo-Commit": repo.sha,
                    "ETag": f'"{hashlib.sha256(content).hexdigest()}"',
                }
                if send_body:
                    hub.downloads[(match[1], name)] += 1
                self._send(200, content, headers, send_body)
            else:
                self._error(404, "", f"no route {path}")

        def _repo(self, repo_id: str, revision: str) -> Repo | None:
            """The repository, or None once an error has been answered."""
            repo = hub.repos.get(repo_id)
            if repo is None:
                self._error(401, "RepoNotFound", "Repository not found")
                return None
            if repo.gated and self.headers.get("Authorization") != f"Bearer {ACCEPTED_TOKEN}":
                status = 403 if self.headers.get("Authorization") else 401
                message = f"Access to model {repo_id} is restricted. You must have access to it."
                self._error(status, "GatedRepo", message)
                return None
            if revision != repo.sha:
                self._error(404, "RevisionNotFound", f"Invalid rev id: {revision}")
                return None
            return repo

        def _error(self, status: int, code: str, message: str, sha: str | None = None) -> None:
            headers = {"X-Error-Message": message}
            if code:
                headers["X-Error-Code"] = code
            if sha:
                headers["X-Repo-Commit"] = sha
            body = json.dumps({"error": message}).encode()
            self._send(status, body, headers, self.command != "HEAD")

        def _send(self, status: int, body: bytes, headers: dict, send_body: bool) -> None:
            self.send_response(status)
            for name, value in headers.items():
                self.send_header(name, value)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            if send_body:
                self.wfile.write(body)

    return Handler
