"""
A stand-in for the Hugging Face hub, for offline tests: an HTTP server on 127.0.0.1 that answers the endpoints
huggingface_hub calls to push a folder to a model or Space repo (create_repo, upload_folder) and to download
files (hf_hub_download, snapshot_download), at the newest commit or at an older one, keeping each repo's files in a
directory and each commit's in another. Point the client at it with HF_ENDPOINT=hub.url and HF_TOKEN=anything.

    with HubStandIn(tmp_path) as hub:
        subprocess.run([..., "export_hf.py", "log/", "out/", "--push-to-hub", "someone/tiny"],
                       env={**os.environ, "HF_ENDPOINT": hub.url, "HF_TOKEN": "dummy"})
        hub.files("someone/tiny")   # {path: bytes}; a Space's are hub.files("spaces/someone/demo")

The token's user is `someone`; it may write under OWNERS only, so other owners get the hub's 403. Uploads are
all "regular" (the preupload answer says so, and huggingface_hub then sends every file base64 in the commit's
NDJSON), so no LFS or Xet endpoint is needed. hub.requests lists the "METHOD path" of every request served.
"""

import base64
import hashlib
import json
import os
import re
import shutil
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import unquote, urlsplit

OWNERS = ("someone",)  # the namespaces the test token can write to: its user (no organizations)
REPO = r"(?P<repo>[^/]+/[^/]+)"
KIND = r"(?P<kind>models|spaces)"  # the API's word for the repo type; a Space's files are under /spaces/ too
REV = r"(?P<rev>[^/]+)"


def sha1(data):
    return hashlib.sha1(data).hexdigest()


class Handler(BaseHTTPRequestHandler):
    """One request; the hub's state lives on self.server.hub."""

    def log_message(self, *args):
        pass  # quiet: the test reads hub.requests instead

    def do_HEAD(self):
        self.route("HEAD")

    def do_GET(self):
        self.route("GET")

    def do_POST(self):
        self.route("POST")

    def route(self, method):
        hub, path = self.server.hub, unquote(urlsplit(self.path).path)
        hub.requests.append(f"{method} {path}")
        routes = [("POST", r"/api/repos/create", hub.create_repo),
                  ("POST", r"/api/validate-yaml", hub.validate_yaml),
                  ("POST", rf"/api/{KIND}/{REPO}/preupload/{REV}", hub.preupload),
                  ("POST", rf"/api/{KIND}/{REPO}/commit/{REV}", hub.commit),
                  ("GET", rf"/api/{KIND}/{REPO}(/revision/{REV})?", hub.model_info),
                  ("GET", rf"/api/{KIND}/{REPO}/tree/{REV}(/.*)?", hub.tree),
                  ("GET", rf"(/spaces)?/{REPO}/resolve/{REV}/(?P<file>.+)", hub.resolve),
                  ("HEAD", rf"(/spaces)?/{REPO}/resolve/{REV}/(?P<file>.+)", hub.resolve)]
        for route_method, pattern, answer in routes:
            match = re.fullmatch(pattern, path)
            if route_method == method and match:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                kwargs = {k: v for k, v in match.groupdict().items() if k in ("repo", "file", "rev")}
                if "repo" in kwargs and (match.groupdict().get("kind") == "spaces" or path.startswith("/spaces/")):
                    kwargs["repo"] = "spaces/" + kwargs["repo"]  # a Space's key here, and its folder under root
                return self.reply(*answer(self, body, **kwargs))
        self.reply(404, {"error": f"the stand-in does not know {method} {path}"})

    def reply(self, status, body, headers=None):
        """body: a dict or list (sent as JSON) or bytes. A HEAD gets the headers only."""
        data = body if isinstance(body, bytes) else json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/octet-stream" if isinstance(body, bytes) else "application/json")
        self.send_header("Content-Length", str(len(data)))
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data)


class HubStandIn:
    def __init__(self, root):
        self.root = str(root)  # repo files live in root/OWNER/NAME/ (a Space's in root/spaces/OWNER/NAME/)
        self.repos = {}  # repo_id ("spaces/OWNER/NAME" for a Space) -> {"sha": head commit, "private": bool}
        self.requests = []
        self.commit_status = None  # e.g. 400: every commit fails (a push that breaks half way; a 5xx is retried)
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)  # port 0: a free one
        self.server.hub = self
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"

    def __enter__(self):
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *exc):
        self.server.shutdown()
        self.server.server_close()

    def files(self, repo_id, rev=None):
        """{path: bytes} of a repo's files, at its head or at commit `rev`."""
        top = os.path.join(self.root, repo_id) if rev is None else os.path.join(self.root, ".commits", rev)
        return {os.path.relpath(os.path.join(d, n), top): open(os.path.join(d, n), "rb").read()
                for d, _, names in os.walk(top) for n in names}

    # -- the checks every write goes through, in the hub's order: who you are, then what you may touch

    def refuse_write(self, handler, repo_id):
        """(status, body) of the hub's refusal, or None when this token may write to repo_id."""
        if not handler.headers.get("Authorization", "").startswith("Bearer "):
            return 401, {"error": "Invalid credentials in Authorization header"}
        if repo_id.removeprefix("spaces/").split("/")[0] not in OWNERS:
            return 403, {"error": f"You don't have the rights to write to {repo_id}"}
        return None

    def not_found(self, repo_id):
        return 404, {"error": f"Repository Not Found for url: {repo_id}"}, {"X-Error-Code": "RepoNotFound"}

    # -- the endpoints

    def create_repo(self, handler, body):
        payload = json.loads(body)
        repo_id = f"{payload.get('organization') or OWNERS[0]}/{payload['name']}"
        if payload.get("type") == "space":
            if payload.get("sdk") not in ("gradio", "docker", "static"):
                return 400, {"error": f"a Space needs an sdk (gradio, docker or static), got {payload.get('sdk')}"}
            repo_id = "spaces/" + repo_id
        refused = self.refuse_write(handler, repo_id)
        if refused:
            return refused
        if repo_id in self.repos:
            return 409, {"error": "You already created this model repo", "url": f"{self.url}/{repo_id}"}
        os.makedirs(os.path.join(self.root, repo_id))
        self.repos[repo_id] = {"sha": sha1(repo_id.encode()), "private": payload.get("visibility") == "private",
                               "commits": []}
        return 200, {"url": f"{self.url}/{repo_id}"}

    def validate_yaml(self, handler, body):
        content = json.loads(body)["content"]
        if not content.startswith("---\n"):
            return 400, {"errors": [{"message": "README.md has no YAML metadata block"}]}
        return 200, {"errors": [], "warnings": []}

    def revision(self, repo, rev):
        """The commit a revision names: main, the head commit or an older commit of this repo; None if unknown."""
        if rev in (None, "main", self.repos[repo]["sha"]):
            return self.repos[repo]["sha"]
        return rev if rev in self.repos[repo]["commits"] else None

    def preupload(self, handler, body, repo, rev):
        if repo not in self.repos:
            return self.not_found(repo)
        refused = self.refuse_write(handler, repo)
        if refused:
            return refused
        files = json.loads(body)["files"]
        return 200, {"files": [{"path": f["path"], "uploadMode": "regular", "shouldIgnore": False} for f in files]}

    def commit(self, handler, body, repo, rev):
        """NDJSON: a header line, then one {"key": "file", "value": {path, content (base64), encoding}} per file
        and one {"key": "deletedFile", "value": {path}} per file to delete."""
        if repo not in self.repos:
            return self.not_found(repo)
        refused = self.refuse_write(handler, repo)
        if refused:
            return refused
        if self.commit_status:
            return self.commit_status, {"error": "the stand-in was told to refuse commits"}
        lines = [json.loads(line) for line in body.splitlines() if line.strip()]
        unsupported = [line["key"] for line in lines if line["key"] not in ("header", "file", "deletedFile")]
        if unsupported:  # lfsFile, deletedFolder...: the preupload answer and upload_folder never ask for them
            return 400, {"error": f"the stand-in does not take {unsupported}"}
        for line in lines[1:]:
            path = os.path.join(self.root, repo, line["value"]["path"])
            if line["key"] == "deletedFile":
                if not os.path.isfile(path):
                    return 404, {"error": f"{line['value']['path']} does not exist"}
                os.remove(path)
                continue
            os.makedirs(os.path.dirname(path), exist_ok=True)
            with open(path, "wb") as f:
                f.write(base64.b64decode(line["value"]["content"]))
        self.repos[repo]["sha"] = sha = sha1(self.repos[repo]["sha"].encode() + body)
        self.repos[repo]["commits"].append(sha)
        shutil.copytree(os.path.join(self.root, repo), os.path.join(self.root, ".commits", sha))
        return 200, {"commitUrl": f"{self.url}/{repo}/commit/{sha}", "commitOid": sha, "pullRequestUrl": None}

    def find(self, repo, rev):
        """(the commit, None) of a repo at a revision, or (None, the hub's 404 answer)."""
        if repo not in self.repos:
            return None, self.not_found(repo)
        sha = self.revision(repo, rev)
        if sha is None:
            return None, (404, {"error": f"Invalid rev id: {rev}"}, {"X-Error-Code": "RevisionNotFound"})
        return sha, None

    def model_info(self, handler, body, repo, rev=None):
        sha, missing = self.find(repo, rev)
        if missing:
            return missing
        name = repo.removeprefix("spaces/")
        return 200, {"id": name, "modelId": name, "sha": sha, "private": self.repos[repo]["private"],
                     "siblings": [{"rfilename": path} for path in sorted(self.files(repo, sha))]}

    def tree(self, handler, body, repo, rev):
        sha, missing = self.find(repo, rev)
        if missing:
            return missing
        return 200, [{"type": "file", "path": path, "size": len(data), "oid": sha1(data)}
                     for path, data in sorted(self.files(repo, sha).items())]

    def resolve(self, handler, body, repo, rev, file):
        sha, missing = self.find(repo, rev)
        if missing:
            return missing
        data = self.files(repo, sha).get(file)
        if data is None:
            return 404, {"error": f"{file} does not exist"}, {"X-Error-Code": "EntryNotFound"}
        return 200, data, {"X-Repo-Commit": sha, "ETag": f'"{sha1(data)}"'}
