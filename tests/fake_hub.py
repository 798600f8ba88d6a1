"""A local Hugging Face Hub for tests: a Hub cache laid out as huggingface_hub leaves a finished
download, and a tiny HTTP server that answers the few Hub API calls ``snapshot_download`` makes.

Nothing here reaches the network. huggingface_hub reads its environment once, at import, so
:class:`LocalHub` sets both the environment (for subprocesses) and ``huggingface_hub.constants``
(for this process).
"""

from __future__ import annotations

import hashlib
import json
import os
import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import urlsplit

COMMIT = "0123456789abcdef0123456789abcdef01234567"


class LocalHub:
    """``HF_HOME`` in a temporary folder, offline by default, with a cache of converted models beside it."""

    def __init__(self, root: Path, monkeypatch):
        from huggingface_hub import constants

        self.home = root / "hf-home"
        self.converted = root / "rxt-cache"
        self.env = {
            "HF_HOME": str(self.home),
            "HF_HUB_OFFLINE": "1",
            "HF_HUB_DISABLE_TELEMETRY": "1",
            "RXT_MLX_CACHE": str(self.converted),
        }
        self._monkeypatch = monkeypatch
        for name in ("HF_HUB_CACHE", "HF_TOKEN", "HF_ENDPOINT", "HUGGINGFACE_HUB_CACHE", "TRANSFORMERS_OFFLINE"):
            monkeypatch.delenv(name, raising=False)
        for name, value in self.env.items():
            monkeypatch.setenv(name, value)
        for name, value in {
            "HF_HOME": str(self.home),
            "HF_HUB_CACHE": str(self.home / "hub"),
            "HF_HUB_OFFLINE": True,
            "HF_TOKEN_PATH": str(self.home / "token"),
            "HF_STORED_TOKENS_PATH": str(self.home / "stored_tokens"),
        }.items():
            monkeypatch.setattr(constants, name, value)

    def storage(self, repo: str) -> Path:
        return self.home / "hub" / f"models--{repo.replace('/', '--')}"

    def publish(self, repo: str, folder: Path, commit: str = COMMIT, revision: str = "main") -> Path:
        """Put ``folder``'s files into the cache as a finished download of ``repo`` (blobs, symlinks, ref)."""
        storage = self.storage(repo)
        snapshot = storage / "snapshots" / commit
        for path in sorted(folder.rglob("*")):
            if not path.is_file():
                continue
            data = path.read_bytes()
            blob = storage / "blobs" / hashlib.sha256(data).hexdigest()
            blob.parent.mkdir(parents=True, exist_ok=True)
            blob.write_bytes(data)
            link = snapshot / path.relative_to(folder)
            link.parent.mkdir(parents=True, exist_ok=True)
            link.symlink_to(os.path.relpath(blob, link.parent))
        (storage / "refs").mkdir(parents=True, exist_ok=True)
        (storage / "refs" / revision).write_text(commit)
        return snapshot

    def online(self, endpoint: str) -> None:
        """Let huggingface_hub talk to ``endpoint`` (a :class:`FakeHubServer`, or a closed port)."""
        from huggingface_hub import constants

        self._monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
        self._monkeypatch.setattr(constants, "ENDPOINT", endpoint)
        self._monkeypatch.setattr(
            constants, "HUGGINGFACE_CO_URL_TEMPLATE", endpoint + "/{repo_id}/resolve/{revision}/{filename}"
        )
        self._monkeypatch.setenv("HF_HUB_OFFLINE", "0")
        self._monkeypatch.setenv("HF_ENDPOINT", endpoint)


def folder_files(folder: Path) -> dict[str, bytes]:
    return {str(path.relative_to(folder)): path.read_bytes() for path in sorted(folder.rglob("*")) if path.is_file()}


class FakeHubServer:
    """Serves ``repos`` ({repo: {path: bytes}}) at one commit the way the Hub's HTTP API does.

    Unknown repos and revisions get the Hub's 404 answers (``X-Error-Code``); with ``cut_after``
    set, every download of a larger weights file stops after that many bytes (a dropped connection).
    """

    def __init__(self, repos: dict[str, dict[str, bytes]], commit: str = COMMIT):
        self.repos = repos
        self.commit = commit
        self.cut_after: int | None = None
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):
                pass

            def do_HEAD(self):
                server.answer(self, head=True)

            def do_GET(self):
                server.answer(self, head=False)

        self.http = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.http.server_address[1]}"
        threading.Thread(target=self.http.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.http.shutdown()
        self.http.server_close()

    def answer(self, handler: BaseHTTPRequestHandler, head: bool) -> None:
        parts = urlsplit(handler.path).path.strip("/").split("/")
        if parts[:2] == ["api", "models"] and len(parts) >= 6:
            self._api(handler, "/".join(parts[2:4]), parts[4], parts[5], head)
        elif len(parts) >= 5 and parts[2] == "resolve":
            self._file(handler, "/".join(parts[:2]), "/".join(parts[4:]), head)
        else:
            self._send(handler, 404, b"{}", {}, head)

    def _api(self, handler, repo: str, kind: str, revision: str, head: bool) -> None:
        if repo not in self.repos:
            return self._send(
                handler, 404, b'{"error": "Repository not found"}', {"X-Error-Code": "RepoNotFound"}, head
            )
        if revision not in ("main", self.commit):
            return self._send(handler, 404, b'{"error": "Invalid rev id"}', {"X-Error-Code": "RevisionNotFound"}, head)
        files = self.repos[repo]
        if kind == "revision":
            body = {"id": repo, "sha": self.commit, "siblings": [{"rfilename": path} for path in files]}
        else:
            body = [
                {"type": "file", "path": path, "size": len(data), "oid": hashlib.sha1(data).hexdigest()}
                for path, data in files.items()
            ]
        self._send(handler, 200, json.dumps(body).encode(), {"Content-Type": "application/json"}, head)

    def _file(self, handler, repo: str, path: str, head: bool) -> None:
        data = self.repos.get(repo, {}).get(path)
        if data is None:
            return self._send(handler, 404, b"{}", {"X-Error-Code": "EntryNotFound"}, head)
        headers = {"ETag": f'"{hashlib.sha1(data).hexdigest()}"', "X-Repo-Commit": self.commit}
        if head or self.cut_after is None or len(data) <= self.cut_after or not path.endswith(".safetensors"):
            return self._send(handler, 200, data, headers, head)
        handler.send_response(200)
        for name, value in headers.items():
            handler.send_header(name, value)
        handler.send_header("Content-Length", str(len(data)))
        handler.end_headers()
        handler.wfile.write(data[: self.cut_after])
        handler.wfile.flush()
        handler.close_connection = True
        handler.connection.shutdown(socket.SHUT_RDWR)

    @staticmethod
    def _send(handler, status: int, body: bytes, headers: dict[str, str], head: bool) -> None:
        handler.send_response(status)
        for name, value in headers.items():
            handler.send_header(name, value)
        handler.send_header("Content-Length", str(len(body)))
        handler.end_headers()
        if not head:
            handler.wfile.write(body)
