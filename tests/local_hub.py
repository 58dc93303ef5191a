"""A real Hugging Face Hub HTTP server on 127.0.0.1 for tests (standard library only).

The real `huggingface_hub` client (and `datasets`, which goes through it) talks to this server
over HTTP exactly as it talks to huggingface.co: point `HF_ENDPOINT` at `LocalHub.endpoint`
before importing the client, and set `HF_HUB_DISABLE_XET=1` so uploads use the plain
preupload + LFS + ndjson commit protocol.

On-disk layout under `root` (one folder per repo, e.g. `root/datasets/apv/corpus/`):

    repo.json            type, id, visibility, creation date
    refs.json            {"branches": {name: commit id}, "tags": {name: commit id}}
    commits/<id>.json    parents, title, message, date and the full snapshot:
                         {path: {"sha256", "size", "oid" (git blob id), "lfs", "commit"}}
    blobs/<sha256>       file contents, content-addressed

Like the real Hub, a new repo starts with one commit holding `.gitattributes`, and preupload
answers "lfs" for binary or large files (which then go through the LFS batch API and a PUT
to this server) and "regular" for text (sent inline in the commit). Revisions are branch
names, tag names or full commit ids. Pull requests, gating and auth are not modelled: any
token is accepted. Requests to routes this server does not know are answered 404 and
recorded in `LocalHub.unhandled_requests`; handler crashes are answered 500 and recorded in
`LocalHub.errors`.
"""

from __future__ import annotations

import base64
import codecs
import hashlib
import json
import os
import re
import secrets
import shutil
import sys
import tempfile
import threading
import traceback
from collections.abc import Callable, Iterator
from datetime import datetime, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path, PurePosixPath
from typing import Any, NoReturn
from urllib.parse import parse_qs, unquote, urlencode, urlsplit

# URL segment -> repo type, for `/api/{models,datasets,spaces}/...`.
API_REPO_TYPES = {"models": "model", "datasets": "dataset", "spaces": "space"}
# Repo type -> prefix of its web and resolve URLs (models have none).
URL_PREFIXES = {"model": "", "dataset": "datasets/", "space": "spaces/"}

# The Hub refuses regular (in-git) uploads above 10 MB; such files must go through LFS.
LFS_SIZE_THRESHOLD = 10 * 1024 * 1024
INITIAL_GITATTRIBUTES = b"""\
*.bin filter=lfs diff=lfs merge=lfs -text
*.ckpt filter=lfs diff=lfs merge=lfs -text
*.h5 filter=lfs diff=lfs merge=lfs -text
*.npy filter=lfs diff=lfs merge=lfs -text
*.npz filter=lfs diff=lfs merge=lfs -text
*.parquet filter=lfs diff=lfs merge=lfs -text
*.pt filter=lfs diff=lfs merge=lfs -text
*.pth filter=lfs diff=lfs merge=lfs -text
*.safetensors filter=lfs diff=lfs merge=lfs -text
*.mp4 filter=lfs diff=lfs merge=lfs -text
*.webm filter=lfs diff=lfs merge=lfs -text
"""
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
_COMMIT_ID_RE = re.compile(r"^[0-9a-f]{40}$")
_SHA256_RE = re.compile(r"^[0-9a-f]{64}$")


class HubError(Exception):
    """An HTTP error answered the way the Hub does: status, `X-Error-Code` and a JSON body."""

    def __init__(self, status: int, message: str, code: str | None = None, **headers: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.headers = dict(headers)
        if code is not None:
            # The client maps this header to RepositoryNotFoundError, EntryNotFoundError, ...
            self.headers["X-Error-Code"] = code


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _git_blob_oid(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def _lfs_pointer(sha256: str, size: int) -> bytes:
    """The pointer file git stores in place of an LFS file (its git oid is the file's oid)."""
    return (
        f"version https://git-lfs.github.com/spec/v1\noid sha256:{sha256}\nsize {size}\n".encode()
    )


def _is_binary(sample: bytes) -> bool:
    # A final=False decoder tolerates a multi-byte character cut off at the end of the sample.
    try:
        codecs.getincrementaldecoder("utf-8")().decode(sample, final=False)
    except UnicodeDecodeError:
        return True
    return b"\0" in sample


def _clean_path(path: str) -> str:
    """A file path inside a repo, refusing anything that could escape it."""
    parts = PurePosixPath(path.strip("/")).parts
    if not parts or any(part in (".", "..") for part in parts):
        raise HubError(400, f"Invalid path in repo: {path!r}")
    return "/".join(parts)


def _write_json(path: Path, obj: Any) -> None:
    # Write then rename, so concurrent readers never see a half-written file.
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(8)}.tmp")
    tmp.write_text(json.dumps(obj, indent=1))
    os.replace(tmp, path)


class _Repo:
    """One repo folder on disk: refs, commit snapshots and a blob store."""

    def __init__(self, folder: Path, repo_type: str, repo_id: str) -> None:
        self.folder = folder
        self.repo_type = repo_type
        self.repo_id = repo_id

    @property
    def meta(self) -> dict[str, Any]:
        return json.loads((self.folder / "repo.json").read_text())

    def refs(self) -> dict[str, dict[str, str]]:
        return json.loads((self.folder / "refs.json").read_text())

    def write_refs(self, refs: dict[str, dict[str, str]]) -> None:
        _write_json(self.folder / "refs.json", refs)

    def commit(self, commit_id: str) -> dict[str, Any]:
        return json.loads((self.folder / "commits" / f"{commit_id}.json").read_text())

    def resolve(self, revision: str) -> dict[str, Any]:
        """The commit a branch, tag or full commit id points to."""
        refs = self.refs()
        commit_id = refs["branches"].get(revision) or refs["tags"].get(revision)
        commit_file = self.folder / "commits" / f"{revision}.json"
        if commit_id is None and _COMMIT_ID_RE.match(revision) and commit_file.exists():
            commit_id = revision
        if commit_id is None:
            raise HubError(404, f"Invalid rev id: {revision}", "RevisionNotFound")
        return self.commit(commit_id)

    def blob_path(self, sha256: str) -> Path:
        return self.folder / "blobs" / sha256

    def store_blob(self, data: bytes) -> str:
        sha256 = hashlib.sha256(data).hexdigest()
        if not self.blob_path(sha256).exists():
            tmp = self.folder / "blobs" / f".{secrets.token_hex(8)}.tmp"
            tmp.write_bytes(data)
            os.replace(tmp, self.blob_path(sha256))
        return sha256

    def store_blob_stream(self, chunks: Iterator[bytes], sha256: str) -> None:
        """Store an LFS upload, checking it against the sha256 it was announced with."""
        tmp = self.folder / "blobs" / f".{secrets.token_hex(8)}.tmp"
        digest = hashlib.sha256()
        try:
            with tmp.open("wb") as f:
                for chunk in chunks:
                    digest.update(chunk)
                    f.write(chunk)
            if digest.hexdigest() != sha256:
                raise HubError(400, f"Uploaded content does not match its sha256 {sha256}")
            os.replace(tmp, self.blob_path(sha256))
        finally:
            tmp.unlink(missing_ok=True)

    def regular_entry(self, data: bytes, commit_id: str) -> dict[str, Any]:
        """Store a file committed inline and describe it as a commit snapshot entry."""
        return {
            "sha256": self.store_blob(data),
            "size": len(data),
            "oid": _git_blob_oid(data),
            "lfs": False,
            "commit": commit_id,
        }

    @staticmethod
    def lfs_entry(sha256: str, size: int, commit_id: str) -> dict[str, Any]:
        return {
            "sha256": sha256,
            "size": size,
            "oid": _git_blob_oid(_lfs_pointer(sha256, size)),
            "lfs": True,
            "commit": commit_id,
        }

    def write_commit(
        self,
        commit_id: str,
        parents: list[str],
        files: dict[str, dict[str, Any]],
        title: str,
        message: str,
    ) -> dict[str, Any]:
        commit = {
            "id": commit_id,
            "parents": parents,
            "title": title,
            "message": message,
            "date": _now(),
            "files": files,
        }
        _write_json(self.folder / "commits" / f"{commit_id}.json", commit)
        return commit


class _Store:
    """All repos under one root folder; one lock serialises every write."""

    def __init__(self, root: Path, user: str, page_size: int) -> None:
        self.root = root
        self.user = user
        self.page_size = page_size
        self.lock = threading.Lock()

    def _folder(self, repo_type: str, namespace: str, name: str) -> Path:
        for part in (namespace, name):
            if not _NAME_RE.match(part) or ".." in part:
                raise HubError(400, f"Invalid repo name: {namespace}/{name}")
        return self.root / f"{repo_type}s" / namespace / name

    def open(self, repo_type: str, namespace: str, name: str) -> _Repo:
        folder = self._folder(repo_type, namespace, name)
        if not (folder / "refs.json").exists():
            raise HubError(404, "Repository not found", "RepoNotFound")
        return _Repo(folder, repo_type, f"{namespace}/{name}")

    def create(
        self, repo_type: str, namespace: str, name: str, private: bool, sdk: str | None
    ) -> bool:
        """Create a repo with its initial commit; False if it already exists."""
        folder = self._folder(repo_type, namespace, name)
        with self.lock:
            if (folder / "refs.json").exists():
                return False
            for sub in ("commits", "blobs"):
                (folder / sub).mkdir(parents=True, exist_ok=True)
            repo = _Repo(folder, repo_type, f"{namespace}/{name}")
            meta = {"type": repo_type, "id": repo.repo_id, "private": private, "createdAt": _now()}
            if sdk is not None:
                meta["sdk"] = sdk
            _write_json(folder / "repo.json", meta)
            commit_id = secrets.token_hex(20)
            files = {".gitattributes": repo.regular_entry(INITIAL_GITATTRIBUTES, commit_id)}
            repo.write_commit(commit_id, [], files, "initial commit", "")
            # refs.json is written last: its presence is what makes the repo exist.
            repo.write_refs({"branches": {"main": commit_id}, "tags": {}})
            return True

    def delete(self, repo_type: str, namespace: str, name: str) -> None:
        repo = self.open(repo_type, namespace, name)
        with self.lock:
            shutil.rmtree(repo.folder)


def _file_info(path: str, entry: dict[str, Any], last_commit: dict[str, Any] | None) -> dict:
    """A file as the tree and paths-info endpoints describe it."""
    info: dict[str, Any] = {
        "type": "file",
        "oid": entry["oid"],
        "size": entry["size"],
        "path": path,
    }
    if entry["lfs"]:
        pointer_size = len(_lfs_pointer(entry["sha256"], entry["size"]))
        info["lfs"] = {"oid": entry["sha256"], "size": entry["size"], "pointerSize": pointer_size}
    if last_commit is not None:
        info["lastCommit"] = {k: last_commit[k] for k in ("id", "title", "date")}
    return info


def _folder_info(path: str, files: dict[str, dict[str, Any]]) -> dict:
    # Not git's tree hash, but stable and it changes whenever anything below the folder changes.
    below = sorted((p, e["oid"]) for p, e in files.items() if p.startswith(path + "/"))
    oid = hashlib.sha1(json.dumps(below).encode()).hexdigest()
    return {"type": "directory", "oid": oid, "size": 0, "path": path}


def _tree(files: dict[str, dict[str, Any]], folder: str, recursive: bool) -> list[str]:
    """Paths listed under `folder`: files and folders, sorted (all levels if recursive)."""
    listed: set[str] = set()
    for path in files:
        if folder and not path.startswith(folder + "/"):
            continue
        parts = path.split("/")
        depth = folder.count("/") + 1 if folder else 0
        subfolders = ["/".join(parts[: i + 1]) for i in range(depth, len(parts) - 1)]
        if recursive or not subfolders:
            listed.update(subfolders)
            listed.add(path)
        else:
            listed.add(subfolders[0])
    return sorted(listed)


def _is_true(value: str | None) -> bool:
    return value is not None and value.lower() in ("1", "true", "yes")


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, address: tuple[str, int], hub: LocalHub) -> None:
        self.hub = hub
        super().__init__(address, _Handler)


class _Handler(BaseHTTPRequestHandler):
    # HTTP/1.1 keeps connections alive, as the client's connection pool expects.
    protocol_version = "HTTP/1.1"
    server: _Server

    def log_message(self, format: str, *args: Any) -> None:
        pass  # Unknown routes and crashes are reported by `_handle`; the rest is noise.

    def do_GET(self) -> None:
        self._handle("GET")

    def do_HEAD(self) -> None:
        self._handle("HEAD")

    def do_POST(self) -> None:
        self._handle("POST")

    def do_PUT(self) -> None:
        self._handle("PUT")

    def do_DELETE(self) -> None:
        self._handle("DELETE")

    # ----------------------------------------------------------------- plumbing

    @property
    def store(self) -> _Store:
        return self.server.hub.store

    @property
    def endpoint(self) -> str:
        return self.server.hub.endpoint

    def _handle(self, method: str) -> None:
        url = urlsplit(self.path)
        # Split the raw path before unquoting: revisions and paths arrive quoted with "/" as %2F.
        parts = [unquote(p) for p in url.path.split("/")[1:]]
        if parts and parts[-1] == "":
            parts.pop()
        self.query = {k: v[-1] for k, v in parse_qs(url.query).items()}
        self.body_chunks = self._iter_body()
        try:
            self._route(method, parts)
        except HubError as err:
            self._send_json({"error": err.message}, err.status, err.headers)
        except ConnectionError:
            # The client went away (e.g. it stopped reading a download): nothing left to answer.
            self.close_connection = True
            return
        except Exception:
            trace = traceback.format_exc()
            self.server.hub.errors.append(f"{method} {self.path}\n{trace}")
            print(f"[local_hub] ERROR in {method} {self.path}\n{trace}", file=sys.stderr)
            self._send_json({"error": "local hub crashed, see its stderr"}, 500)
        # Unread request bytes would be parsed as the next request on this connection.
        for _ in self.body_chunks:
            pass

    def _iter_body(self) -> Iterator[bytes]:
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            while size := int(self.rfile.readline().split(b";")[0], 16):
                yield self.rfile.read(size)
                self.rfile.readline()  # the CRLF closing each chunk
            while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                pass  # trailers
            return
        remaining = int(self.headers.get("Content-Length") or 0)
        while remaining > 0:
            chunk = self.rfile.read(min(remaining, 1 << 20))
            if not chunk:
                raise ConnectionError("client closed the connection mid-body")
            remaining -= len(chunk)
            yield chunk

    def _body(self) -> bytes:
        return b"".join(self.body_chunks)

    def _json_body(self) -> Any:
        try:
            return json.loads(self._body() or b"{}")
        except json.JSONDecodeError as err:
            raise HubError(400, f"Invalid JSON body: {err}") from err

    def _send(
        self,
        status: int,
        body: bytes = b"",
        headers: dict[str, str] | None = None,
        content_type: str = "application/json",
    ) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _send_json(
        self, obj: Any, status: int = 200, headers: dict[str, str] | None = None
    ) -> None:
        self._send(status, json.dumps(obj).encode(), headers)

    def _send_page(self, items: list[Any], make_item: Callable[[Any], Any]) -> None:
        """Send one page of `items` and, if more remain, a `Link: <...>; rel="next"` header."""
        start = int(self.query.get("cursor", 0))
        end = start + self.store.page_size
        headers = {}
        if end < len(items):
            query = urlencode({**self.query, "cursor": end})
            headers["Link"] = f'<{self.endpoint}{urlsplit(self.path).path}?{query}>; rel="next"'
        self._send_json([make_item(item) for item in items[start:end]], headers=headers)

    def _unhandled(self, method: str) -> NoReturn:
        line = f"{method} {self.path}"
        self.server.hub.unhandled_requests.append(line)
        print(f"[local_hub] UNHANDLED ROUTE {line}", file=sys.stderr)
        raise HubError(404, f"local hub: no route for {line}", **{"X-Error-Message": line})

    def _repo_url(self, repo: _Repo) -> str:
        return f"{self.endpoint}/{URL_PREFIXES[repo.repo_type]}{repo.repo_id}"

    # ------------------------------------------------------------------ routing

    def _route(self, method: str, parts: list[str]) -> None:
        match (method, parts):
            case ("GET", ["api", "whoami-v2"]):
                user = self.store.user
                self._send_json(
                    {
                        "type": "user",
                        "name": user,
                        "fullname": user,
                        "orgs": [],
                        "auth": {"type": "access_token", "accessToken": {"role": "write"}},
                    }
                )
            case ("GET", ["api", "agent-harnesses"]):
                # The client fetches this registry to describe itself in its User-Agent.
                self._send_json({"standardEnvVars": [], "harnesses": {}})
            case ("POST", ["api", "validate-yaml"]):
                self._send_json({"errors": [], "warnings": []})
            case ("POST", ["api", "repos", "create"]):
                self._create_repo(self._json_body())
            case ("DELETE", ["api", "repos", "delete"]):
                body = self._json_body()
                namespace = body.get("organization") or self.store.user
                self.store.delete(body.get("type") or "model", namespace, body["name"])
                self._send_json({})
            case (_, ["api", plural, _, _, *_]) if plural in API_REPO_TYPES:
                self._route_repo_api(method, API_REPO_TYPES[plural], parts[2:])
            case _:
                repo_type, repo_parts = "model", parts
                if parts and parts[0] in ("datasets", "spaces"):
                    repo_type, repo_parts = API_REPO_TYPES[parts[0]], parts[1:]
                self._route_repo_files(method, repo_type, repo_parts)

    def _route_repo_api(self, method: str, repo_type: str, repo_parts: list[str]) -> None:
        namespace, name, *rest = repo_parts
        # Pick the action before opening the repo, so an unknown route is reported as such
        # even when the repo does not exist.
        action: Callable[[_Repo], None]
        match (method, rest):
            case ("GET", []):
                action = lambda repo: self._repo_info(repo, "main")
            case ("GET", ["revision", revision]):
                action = lambda repo: self._repo_info(repo, revision)
            case ("GET", ["tree", revision, *path]):
                action = lambda repo: self._list_tree(repo, revision, "/".join(path))
            case ("POST", ["paths-info", revision]):
                action = lambda repo: self._paths_info(repo, revision)
            case ("GET", ["refs"]):
                action = self._list_refs
            case ("GET", ["commits", revision]):
                action = lambda repo: self._list_commits(repo, revision)
            case ("POST", ["preupload", revision]):
                action = lambda repo: self._preupload(repo, revision)
            case ("POST", ["commit", revision]):
                action = lambda repo: self._commit(repo, revision)
            case ("POST", ["branch", branch]):
                start = self._json_body().get("startingPoint")
                action = lambda repo: self._create_ref(repo, "branches", branch, start)
            case ("DELETE", ["branch", branch]):
                action = lambda repo: self._delete_ref(repo, "branches", branch)
            case ("POST", ["tag", revision]):
                tag = self._json_body()["tag"]
                action = lambda repo: self._create_ref(repo, "tags", tag, revision)
            case ("DELETE", ["tag", tag]):
                action = lambda repo: self._delete_ref(repo, "tags", tag)
            case _:
                self._unhandled(method)
        action(self.store.open(repo_type, namespace, name))

    def _route_repo_files(self, method: str, repo_type: str, parts: list[str]) -> None:
        match (method, parts):
            case ("GET" | "HEAD", [namespace, name, "resolve", revision, *path]) if path:
                repo = self.store.open(repo_type, namespace, name)
                self._resolve(repo, revision, "/".join(path))
            case ("POST", [namespace, name, "info", "lfs", "objects", "batch"]) if name.endswith(
                ".git"
            ):
                self._lfs_batch(self.store.open(repo_type, namespace, name[: -len(".git")]))
            case ("PUT", [namespace, name, "info", "lfs", "objects", oid]) if name.endswith(".git"):
                self._lfs_upload(self.store.open(repo_type, namespace, name[: -len(".git")]), oid)
            case _:
                self._unhandled(method)

    # ------------------------------------------------------------------ repos

    def _create_repo(self, body: dict[str, Any]) -> None:
        repo_type = body.get("type") or "model"
        if repo_type not in URL_PREFIXES:
            raise HubError(400, f"Unsupported repo type: {repo_type}")
        namespace = body.get("organization") or self.store.user
        private = body.get("visibility") == "private" or bool(body.get("private"))
        created = self.store.create(repo_type, namespace, body["name"], private, body.get("sdk"))
        repo_id = f"{namespace}/{body['name']}"
        url = f"{self.endpoint}/{URL_PREFIXES[repo_type]}{repo_id}"
        if not created:
            # `create_repo(exist_ok=True)` reads the url from this 409 body.
            self._send_json(
                {"error": f"You already created this {repo_type} repo", "url": url}, 409
            )
            return
        self._send_json({"url": url, "name": repo_id, "id": repo_id})

    def _repo_info(self, repo: _Repo, revision: str) -> None:
        commit = repo.resolve(revision)
        meta = repo.meta
        with_blobs = _is_true(self.query.get("blobs"))
        siblings = []
        for path, entry in sorted(commit["files"].items()):
            sibling: dict[str, Any] = {"rfilename": path}
            if with_blobs:
                sibling.update(size=entry["size"], blobId=entry["oid"])
                if entry["lfs"]:
                    pointer_size = len(_lfs_pointer(entry["sha256"], entry["size"]))
                    sibling["lfs"] = {
                        "sha256": entry["sha256"],
                        "size": entry["size"],
                        "pointerSize": pointer_size,
                    }
            siblings.append(sibling)
        info = {
            "id": repo.repo_id,
            "author": repo.repo_id.split("/")[0],
            "sha": commit["id"],
            "lastModified": commit["date"],
            "createdAt": meta["createdAt"],
            "private": meta["private"],
            "gated": False,
            "disabled": False,
            "downloads": 0,
            "likes": 0,
            "tags": [],
            "siblings": siblings,
        }
        if "sdk" in meta:
            info["sdk"] = meta["sdk"]
        self._send_json(info)

    def _list_refs(self, repo: _Repo) -> None:
        refs = repo.refs()

        def listing(kind: str, prefix: str) -> list[dict[str, str]]:
            return [
                {"name": name, "ref": f"{prefix}{name}", "targetCommit": commit_id}
                for name, commit_id in sorted(refs[kind].items())
            ]

        self._send_json(
            {
                "branches": listing("branches", "refs/heads/"),
                "tags": listing("tags", "refs/tags/"),
                "converts": [],
                "pullRequests": [],
            }
        )

    def _create_ref(self, repo: _Repo, kind: str, name: str, start: str | None) -> None:
        if not name or name.startswith("refs/"):
            raise HubError(400, f"Invalid ref name: {name!r}")
        with self.store.lock:
            commit = repo.resolve(start or "main")
            refs = repo.refs()
            if name in refs[kind]:
                raise HubError(409, f"Reference {name} already exists")
            refs[kind][name] = commit["id"]
            repo.write_refs(refs)
        self._send_json({})

    def _delete_ref(self, repo: _Repo, kind: str, name: str) -> None:
        if kind == "branches" and name == "main":
            raise HubError(403, "Cannot delete the main branch")
        with self.store.lock:
            refs = repo.refs()
            if refs[kind].pop(name, None) is None:
                raise HubError(404, f"Invalid rev id: {name}", "RevisionNotFound")
            repo.write_refs(refs)
        self._send_json({})

    def _list_commits(self, repo: _Repo, revision: str) -> None:
        history = [repo.resolve(revision)]
        while history[-1]["parents"]:
            history.append(repo.commit(history[-1]["parents"][0]))
        user = [{"user": self.store.user}]
        self._send_page(
            history,
            lambda c: {k: c[k] for k in ("id", "title", "message", "date")} | {"authors": user},
        )

    # ------------------------------------------------------------------ listings

    def _list_tree(self, repo: _Repo, revision: str, folder: str) -> None:
        commit = repo.resolve(revision)
        files = commit["files"]
        folder = folder.strip("/")
        paths = _tree(files, folder, _is_true(self.query.get("recursive")))
        if folder and not paths:
            raise HubError(404, f"Folder {folder!r} not found", "EntryNotFound")
        expand = _is_true(self.query.get("expand"))
        self._send_page(paths, lambda path: self._path_info(repo, files, path, expand))

    def _paths_info(self, repo: _Repo, revision: str) -> None:
        body = self._body()
        # The client posts a form (paths=a&paths=b&expand=false); accept JSON too.
        if self.headers.get("Content-Type", "").startswith("application/json"):
            fields = json.loads(body)
            paths, expand = fields.get("paths", []), str(fields.get("expand", False))
        else:
            form = parse_qs(body.decode())
            paths, expand = form.get("paths", []), form.get("expand", ["false"])[-1]
        files = repo.resolve(revision)["files"]
        folders = {p.rsplit("/", i)[0] for p in files for i in range(1, p.count("/") + 1)}
        infos = [
            self._path_info(repo, files, path.strip("/"), _is_true(expand))
            for path in paths
            if path.strip("/") in files or path.strip("/") in folders
        ]
        self._send_json(infos)

    def _path_info(self, repo: _Repo, files: dict, path: str, expand: bool) -> dict:
        if path not in files:
            return _folder_info(path, files)
        last_commit = repo.commit(files[path]["commit"]) if expand else None
        return _file_info(path, files[path], last_commit)

    # ------------------------------------------------------------------ downloads

    def _resolve(self, repo: _Repo, revision: str, path: str) -> None:
        commit = repo.resolve(revision)
        entry = commit["files"].get(path)
        if entry is None:
            # X-Repo-Commit lets the client cache that the file does not exist at this commit.
            raise HubError(
                404, "Entry not found", "EntryNotFound", **{"X-Repo-Commit": commit["id"]}
            )
        size = entry["size"]
        headers = {
            "X-Repo-Commit": commit["id"],
            "ETag": f'"{entry["sha256"] if entry["lfs"] else entry["oid"]}"',
            "Accept-Ranges": "bytes",
        }
        if entry["lfs"]:
            headers.update({"X-Linked-Etag": f'"{entry["sha256"]}"', "X-Linked-Size": str(size)})
        start, end, status = 0, size, 200
        if (byte_range := self.headers.get("Range")) is not None:
            start, end = self._parse_range(byte_range, size)
            status = 206
            headers["Content-Range"] = f"bytes {start}-{end - 1}/{size}"
        self.send_response(status)
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Content-Length", str(end - start))
        for key, value in headers.items():
            self.send_header(key, value)
        self.end_headers()
        if self.command == "HEAD":
            return
        with repo.blob_path(entry["sha256"]).open("rb") as f:
            f.seek(start)
            remaining = end - start
            while remaining > 0:
                chunk = f.read(min(remaining, 1 << 20))
                self.wfile.write(chunk)
                remaining -= len(chunk)

    def _parse_range(self, header: str, size: int) -> tuple[int, int]:
        """`bytes=a-b`, `bytes=a-` or `bytes=-n` as a half-open [start, end) interval."""
        match = re.fullmatch(r"bytes=(\d*)-(\d*)", header.strip())
        if match is None or match.groups() == ("", ""):
            raise HubError(400, f"Unsupported Range header: {header}")
        first, last = match.groups()
        if first == "":
            start, end = max(size - int(last), 0), size
        else:
            start, end = int(first), min(int(last) + 1, size) if last else size
        if start >= end:
            raise HubError(416, "Range not satisfiable", **{"Content-Range": f"bytes */{size}"})
        return start, end

    # ------------------------------------------------------------------ uploads

    def _preupload(self, repo: _Repo, revision: str) -> None:
        body = self._json_body()
        files = repo.resolve(revision)["files"]
        answers = []
        for item in body.get("files", []):
            sample = base64.b64decode(item.get("sample", ""))
            lfs = item["size"] > LFS_SIZE_THRESHOLD or _is_binary(sample)
            existing = files.get(item["path"])
            # The client skips files whose oid (sha256 for LFS, git blob id otherwise) is unchanged.
            oid = None
            if existing is not None:
                oid = existing["sha256"] if existing["lfs"] else existing["oid"]
            answers.append(
                {
                    "path": item["path"],
                    "uploadMode": "lfs" if lfs else "regular",
                    "shouldIgnore": False,
                    "oid": oid,
                }
            )
        self._send_json({"files": answers})

    def _lfs_batch(self, repo: _Repo) -> None:
        body = self._json_body()
        if body.get("operation") != "upload":
            raise HubError(400, "local hub: only the LFS upload operation is supported")
        objects = []
        for obj in body.get("objects", []):
            if not _SHA256_RE.match(obj["oid"]):
                raise HubError(400, f"Invalid LFS oid: {obj['oid']}")
            answer: dict[str, Any] = {"oid": obj["oid"], "size": obj["size"], "authenticated": True}
            # No "actions" tells the client the content is already stored.
            if not repo.blob_path(obj["oid"]).exists():
                href = f"{self._repo_url(repo)}.git/info/lfs/objects/{obj['oid']}"
                answer["actions"] = {"upload": {"href": href}}
            objects.append(answer)
        body = json.dumps({"transfer": "basic", "objects": objects}).encode()
        self._send(200, body, content_type="application/vnd.git-lfs+json")

    def _lfs_upload(self, repo: _Repo, oid: str) -> None:
        if not _SHA256_RE.match(oid):
            raise HubError(400, f"Invalid LFS oid: {oid}")
        repo.store_blob_stream(self.body_chunks, oid)
        self._send(200)

    def _commit(self, repo: _Repo, branch: str) -> None:
        if self.query.get("create_pr"):
            raise HubError(400, "local hub: pull requests are not supported")
        lines = [json.loads(line) for line in self._body().splitlines() if line.strip()]
        if not lines or lines[0].get("key") != "header":
            raise HubError(400, "A commit starts with a header line")
        header = lines[0]["value"]
        with self.store.lock:
            refs = repo.refs()
            if branch not in refs["branches"]:
                raise HubError(404, f"Invalid rev id: {branch} is not a branch", "RevisionNotFound")
            parent_id = refs["branches"][branch]
            if header.get("parentCommit") not in (None, parent_id):
                raise HubError(
                    412, f"Parent commit {header['parentCommit']} is not the head of {branch}"
                )
            commit_id = secrets.token_hex(20)
            files = dict(repo.commit(parent_id)["files"])
            for line in lines[1:]:
                self._apply_operation(repo, files, line["key"], line["value"], commit_id)
            repo.write_commit(
                commit_id, [parent_id], files, header["summary"], header.get("description", "")
            )
            refs["branches"][branch] = commit_id
            repo.write_refs(refs)
        self._send_json(
            {
                "success": True,
                "commitOid": commit_id,
                "commitUrl": f"{self._repo_url(repo)}/commit/{commit_id}",
                "pullRequestUrl": None,
            }
        )

    def _apply_operation(
        self, repo: _Repo, files: dict, key: str, value: dict[str, Any], commit_id: str
    ) -> None:
        path = _clean_path(value["path"])
        if key == "file":
            content = value["content"]
            data = (
                base64.b64decode(content) if value.get("encoding") == "base64" else content.encode()
            )
            entry = repo.regular_entry(data, commit_id)
        elif key == "lfsFile":
            sha256 = value["oid"]
            if not _SHA256_RE.match(sha256) or not repo.blob_path(sha256).exists():
                raise HubError(400, f"LFS object {sha256} of {path} was never uploaded")
            size = value.get("size", repo.blob_path(sha256).stat().st_size)
            entry = repo.lfs_entry(sha256, size, commit_id)
        elif key == "deletedFile":
            if files.pop(path, None) is None:
                raise HubError(404, f"A file with this name doesn't exist: {path}", "EntryNotFound")
            return
        elif key == "deletedFolder":
            below = [p for p in files if p.startswith(path + "/")]
            if not below:
                raise HubError(
                    404, f"A folder with this name doesn't exist: {path}", "EntryNotFound"
                )
            for p in below:
                del files[p]
            return
        else:
            raise HubError(400, f"local hub: unsupported commit operation {key!r}")
        previous = files.get(path)
        # Like git, an unchanged file keeps the commit that last changed it.
        if previous is not None and previous["sha256"] == entry["sha256"]:
            entry["commit"] = previous["commit"]
        files[path] = entry


class LocalHub:
    """A Hugging Face Hub server on 127.0.0.1, storing its repos under `root`.

    Use as a context manager or call `start()` / `stop()`. With no `root`, a temporary folder
    is used and removed on `stop()`. `port=0` binds a free port; `endpoint` gives the URL to
    put in `HF_ENDPOINT`. `user` is the namespace of repos created without one (and what
    `whoami` answers); `page_size` is the number of entries per page of tree and commit
    listings (small values exercise the client's pagination).
    """

    def __init__(
        self,
        root: str | Path | None = None,
        *,
        port: int = 0,
        user: str = "apv",
        page_size: int = 1000,
    ) -> None:
        self._owns_root = root is None
        root = Path(tempfile.mkdtemp(prefix="local-hub-")) if root is None else Path(root)
        self.store = _Store(root, user, page_size)
        self.port = port
        self.unhandled_requests: list[str] = []
        self.errors: list[str] = []
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None

    @property
    def root(self) -> Path:
        return self.store.root

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> LocalHub:
        if self._server is not None:
            raise RuntimeError("LocalHub is already running")
        self.store.root.mkdir(parents=True, exist_ok=True)
        self._server = _Server(("127.0.0.1", self.port), self)
        self.port = self._server.server_address[1]
        self._thread = threading.Thread(
            target=self._server.serve_forever,
            kwargs={"poll_interval": 0.05},
            name=f"local-hub-{self.port}",
            daemon=True,
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._server is None:
            return
        self._server.shutdown()
        self._server.server_close()
        assert self._thread is not None
        self._thread.join()
        self._server = self._thread = None
        if self._owns_root:
            shutil.rmtree(self.store.root, ignore_errors=True)

    def __enter__(self) -> LocalHub:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()
