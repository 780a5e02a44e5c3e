"""A test double of the Hugging Face Hub: the subset of its HTTP API that vqgen's push and load use.

Runs on 127.0.0.1 only, keeps repos in memory, and logs every request so a test can check
what the client really called: create a repo, preupload (every file answered "regular", so the
content travels inline in the commit), commit (NDJSON), and resolve (HEAD/GET of a file).
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import yaml


@dataclass
class Repo:
    files: dict[str, bytes] = field(default_factory=dict)
    commits: list[str] = field(default_factory=lambda: ["0" * 40])

    @property
    def head(self) -> str:
        return self.commits[-1]


class HubState:
    def __init__(self) -> None:
        self.repos: dict[str, Repo] = {}
        self.log: list[tuple[str, str]] = []
        self.lock = threading.Lock()


REPO = r"(?P<repo>[\w.-]+/[\w.-]+)"


class Handler(BaseHTTPRequestHandler):
    state: HubState
    protocol_version = "HTTP/1.1"

    def log_message(self, *args) -> None:  # keep pytest output clean
        pass

    # -- helpers ---------------------------------------------------------------------------------
    def _body(self) -> bytes:
        return self.rfile.read(int(self.headers.get("Content-Length", 0) or 0))

    def _send(self, status: int, payload: object = None, headers: dict[str, str] | None = None, raw: bytes | None = None,
              head: bool = False) -> None:
        data = raw if raw is not None else json.dumps(payload if payload is not None else {}).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/octet-stream" if raw is not None else "application/json")
        self.send_header("Content-Length", str(len(data)))
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.end_headers()
        if not head:
            self.wfile.write(data)

    def _not_found(self, code: str, head: bool = False) -> None:
        self._send(404, {"error": code}, headers={"X-Error-Code": code, "X-Error-Message": code}, head=head)

    def _route(self, method: str) -> None:
        path = self.path.split("?")[0]
        with self.state.lock:
            self.state.log.append((method, path))
        if method == "POST" and path == "/api/repos/create":
            return self._create_repo()
        if m := re.fullmatch(rf"/api/models/{REPO}/preupload/(?P<rev>[^/]+)", path):
            return self._preupload(m["repo"])
        if m := re.fullmatch(rf"/api/models/{REPO}/commit/(?P<rev>[^/]+)", path):
            return self._commit(m["repo"])
        if m := re.fullmatch(rf"/{REPO}/resolve/(?P<rev>[^/]+)/(?P<file>.+)", path):
            return self._resolve(m["repo"], m["file"], head=method == "HEAD")
        if m := re.fullmatch(rf"/api/models/{REPO}(/revision/(?P<rev>[^/]+))?", path):
            return self._info(m["repo"])
        if method == "POST" and path == "/api/validate-yaml":
            return self._validate_yaml()
        if path == "/api/whoami-v2":
            return self._send(200, {"name": "user", "type": "user", "orgs": [], "auth": {"type": "access_token"}})
        self._send(404, {"error": f"the test Hub does not implement {method} {path}"})

    # -- endpoints -------------------------------------------------------------------------------
    def _create_repo(self) -> None:
        body = json.loads(self._body() or b"{}")
        repo_id = f"{body['organization']}/{body['name']}" if body.get("organization") else body["name"]
        if "/" not in repo_id:
            repo_id = f"user/{repo_id}"
        with self.state.lock:
            if repo_id in self.state.repos:
                return self._send(409, {"error": "You already created this model repo", "url": f"/{repo_id}"})
            self.state.repos[repo_id] = Repo()
        self._send(200, {"url": f"http://{self.headers['Host']}/{repo_id}", "name": repo_id})

    def _validate_yaml(self) -> None:
        """The model card's front matter must be a YAML mapping, as on the real Hub."""
        content = json.loads(self._body())["content"]
        match = re.match(r"^---\n(.*?)\n---", content, re.S)
        try:
            ok = match is not None and isinstance(yaml.safe_load(match.group(1)), dict)
        except yaml.YAMLError:
            ok = False
        if not ok:
            return self._send(400, {"errors": [{"message": "README.md has no valid YAML metadata"}]})
        self._send(200, {"errors": [], "warnings": []})

    def _preupload(self, repo_id: str) -> None:
        body = json.loads(self._body())
        if repo_id not in self.state.repos:
            return self._not_found("RepoNotFound")
        files = [{"path": f["path"], "uploadMode": "regular", "shouldIgnore": False, "oid": None} for f in body["files"]]
        self._send(200, {"files": files, "commitOid": self.state.repos[repo_id].head})

    def _commit(self, repo_id: str) -> None:
        lines = [json.loads(line) for line in self._body().decode().splitlines() if line.strip()]
        repo = self.state.repos.get(repo_id)
        if repo is None:
            return self._not_found("RepoNotFound")
        with self.state.lock:
            for line in lines:
                value = line.get("value", {})
                if line["key"] == "file":
                    repo.files[value["path"]] = base64.b64decode(value["content"])
                elif line["key"] in ("deletedFile", "deletedFolder"):
                    repo.files = {p: c for p, c in repo.files.items() if not p.startswith(value["path"])}
                elif line["key"] != "header":
                    return self._send(400, {"error": f"the test Hub cannot store {line['key']} entries"})
            sha = hashlib.sha1(json.dumps(sorted((p, hashlib.sha1(c).hexdigest()) for p, c in repo.files.items())).encode()).hexdigest()
            repo.commits.append(sha)
        host = self.headers["Host"]
        self._send(200, {"commitUrl": f"http://{host}/{repo_id}/commit/{sha}", "commitOid": sha, "pullRequestUrl": None})

    def _resolve(self, repo_id: str, filename: str, head: bool) -> None:
        repo = self.state.repos.get(repo_id)
        if repo is None:
            return self._not_found("RepoNotFound", head=head)
        if filename not in repo.files:
            return self._not_found("EntryNotFound", head=head)
        data = repo.files[filename]
        etag = f'"{hashlib.sha1(data).hexdigest()}"'
        self._send(200, raw=data, head=head, headers={"X-Repo-Commit": repo.head, "ETag": etag})

    def _info(self, repo_id: str) -> None:
        repo = self.state.repos.get(repo_id)
        if repo is None:
            return self._not_found("RepoNotFound")
        self._send(200, {"id": repo_id, "sha": repo.head, "siblings": [{"rfilename": p} for p in sorted(repo.files)]})

    def do_GET(self) -> None:
        self._route("GET")

    def do_HEAD(self) -> None:
        self._route("HEAD")

    def do_POST(self) -> None:
        self._route("POST")


def start_hub() -> tuple[ThreadingHTTPServer, HubState]:
    """Start the server on a free port of 127.0.0.1 in a daemon thread."""
    state = HubState()
    handler = type("BoundHandler", (Handler,), {"state": state})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, state
