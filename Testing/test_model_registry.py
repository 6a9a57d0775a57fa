"""Model registry of the Slicer module: registry file checks, cache folder, download, checksum, unpacking.

Downloads go to a real http.server that the test starts on 127.0.0.1; nothing leaves the
machine.
"""

from __future__ import annotations

import hashlib
import http.server
import io
import json
import sys
import tarfile
import threading
import zipfile
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "CLIPNodule"))

from CLIPNoduleLib import model_registry  # noqa: E402
from clipnodule.errors import BundleError  # noqa: E402


def make_bundle_zip(folder: Path, name: str = "demo", version: str = "2.0") -> bytes:
    """Return the bytes of a zip holding one bundle folder (manifest.json and a weights file)."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr(f"{name}/manifest.json", json.dumps({"name": name, "version": version}))
        archive.writestr(f"{name}/fold_0.safetensors", b"\x00" * 300_000)
    return buffer.getvalue()


@pytest.fixture()
def http_server(tmp_path):
    """Serve tmp_path/www on 127.0.0.1 and count GET requests per path."""
    root = tmp_path / "www"
    root.mkdir()
    requests: list[str] = []

    class Handler(http.server.SimpleHTTPRequestHandler):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, directory=str(root), **kwargs)

        def do_GET(self):  # noqa: N802 - http.server API name
            requests.append(self.path)
            super().do_GET()

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield root, f"http://127.0.0.1:{server.server_address[1]}", requests
    finally:
        server.shutdown()
        server.server_close()


def entry_for(url: str | None, data: bytes | None, **changes) -> model_registry.ModelEntry:
    """Return a registry entry for `data` served at `url`; both None for a bundle without download."""
    values = dict(
        name="demo",
        version="2.0",
        description="test bundle",
        url=url,
        sha256=hashlib.sha256(data).hexdigest() if data is not None else None,
        size=len(data) if data is not None else None,
        licence="Apache-2.0",
        intended_use="tests",
    )
    values.update(changes)
    return model_registry.ModelEntry(**values)


def write_registry(path: Path, models: list[dict], default: str | None = None) -> Path:
    path.write_text(json.dumps({"format_version": 1, "default": default, "models": models}))
    return path


# Registry file.


def test_shipped_registry_loads():
    registry = model_registry.load_registry(model_registry.RESOURCES_DIR / "model_registry.json")
    assert registry.default_name == "clipnodule-demo-lidc"
    demo = registry.default
    assert demo.local_path == "models/clipnodule-demo-lidc"
    assert demo.url is None
    assert demo.intended_use and demo.licence
    for entry in registry.entries:
        assert entry.url is None or (entry.sha256 and len(entry.sha256) == 64)


def test_registry_missing_field_rejected(tmp_path):
    path = write_registry(tmp_path / "registry.json", [{"name": "x", "version": "1"}])
    with pytest.raises(BundleError, match="lacks the field.*description"):
        model_registry.load_registry(path)


def test_registry_url_without_checksum_rejected(tmp_path):
    model = dict(name="x", version="1", description="d", url="http://127.0.0.1/x.zip", sha256=None,
                 size=None, licence="l", intended_use="u")
    path = write_registry(tmp_path / "registry.json", [model])
    with pytest.raises(BundleError, match="no sha256"):
        model_registry.load_registry(path)


def test_registry_unknown_default_rejected(tmp_path):
    model = dict(name="x", version="1", description="d", url=None, sha256=None, size=None, licence="l",
                 intended_use="u")
    path = write_registry(tmp_path / "registry.json", [model], default="y")
    with pytest.raises(BundleError, match="'y' is not in"):
        model_registry.load_registry(path)


def test_registry_invalid_json_rejected(tmp_path):
    path = tmp_path / "registry.json"
    path.write_text("{not json")
    with pytest.raises(BundleError, match="not valid JSON"):
        model_registry.load_registry(path)


# Cache folder.


def test_cache_dir_from_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("CLIPNODULE_MODEL_DIR", str(tmp_path / "models"))
    assert model_registry.model_cache_dir() == tmp_path / "models"


def test_cache_dir_default_is_user_cache(monkeypatch, tmp_path):
    monkeypatch.delenv("CLIPNODULE_MODEL_DIR", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.setattr(sys, "platform", "linux")
    assert model_registry.model_cache_dir() == tmp_path / "cache" / "clipnodule" / "models"


# Download.


def test_download_verifies_and_unpacks(http_server, tmp_path):
    root, base_url, requests = http_server
    data = make_bundle_zip(tmp_path)
    (root / "demo.zip").write_bytes(data)
    entry = entry_for(f"{base_url}/demo.zip", data)
    cache = tmp_path / "cache"
    progress: list[tuple[int, int | None]] = []

    bundle = model_registry.ensure_bundle(entry, cache_dir=cache, progress=lambda done, total: progress.append((done, total)))

    assert bundle == cache / "demo-2.0"
    assert json.loads((bundle / "manifest.json").read_text()) == {"name": "demo", "version": "2.0"}
    assert (bundle / "fold_0.safetensors").stat().st_size == 300_000
    assert progress[-1] == (len(data), len(data))
    assert [done for done, _ in progress] == sorted(done for done, _ in progress)
    assert not list(cache.glob(".download-*"))

    # A second request finds the cached bundle without downloading again.
    assert model_registry.ensure_bundle(entry, cache_dir=cache) == bundle
    assert requests == ["/demo.zip"]
    assert model_registry.cached_bundle(entry, cache) == bundle


def test_download_checksum_mismatch_rejected(http_server, tmp_path):
    root, base_url, _ = http_server
    data = make_bundle_zip(tmp_path)
    (root / "demo.zip").write_bytes(data)
    entry = entry_for(f"{base_url}/demo.zip", data, sha256="0" * 64)
    cache = tmp_path / "cache"

    with pytest.raises(BundleError, match=r"has sha256 [0-9a-f]{64}, but the registry expects 0{64}"):
        model_registry.ensure_bundle(entry, cache_dir=cache)

    assert model_registry.cached_bundle(entry, cache) is None
    assert not list(cache.rglob("*.part"))
    assert not list(cache.glob(".download-*"))


def test_download_size_mismatch_rejected(http_server, tmp_path):
    root, base_url, _ = http_server
    data = make_bundle_zip(tmp_path)
    (root / "demo.zip").write_bytes(data)
    entry = entry_for(f"{base_url}/demo.zip", data, size=len(data) + 1)
    with pytest.raises(BundleError, match="bytes, the registry expects"):
        model_registry.download_file(entry.url, tmp_path / "demo.zip", entry.sha256, entry.size)
    assert not (tmp_path / "demo.zip").exists()


def test_download_missing_file_rejected(http_server, tmp_path):
    _, base_url, _ = http_server
    with pytest.raises(BundleError, match="failed .*404"):
        model_registry.download_file(f"{base_url}/absent.zip", tmp_path / "absent.zip", "0" * 64)
    assert not (tmp_path / "absent.zip.part").exists()


def test_download_cancel(http_server, tmp_path):
    root, base_url, _ = http_server
    data = make_bundle_zip(tmp_path)
    (root / "demo.zip").write_bytes(data)
    with pytest.raises(BundleError, match="cancelled"):
        model_registry.download_file(
            f"{base_url}/demo.zip", tmp_path / "demo.zip", hashlib.sha256(data).hexdigest(),
            should_cancel=lambda: True,
        )
    assert not (tmp_path / "demo.zip.part").exists()


def test_entry_without_url_names_drop_in_folder(tmp_path):
    entry = entry_for(None, None)
    with pytest.raises(BundleError, match=str(tmp_path / "cache" / "demo-2.0").replace("\\", "\\\\")):
        model_registry.ensure_bundle(entry, cache_dir=tmp_path / "cache")


# Unpacking.


def test_tar_path_traversal_rejected(tmp_path):
    archive = tmp_path / "evil.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        payload = b"{}"
        info = tarfile.TarInfo("../evil/manifest.json")
        info.size = len(payload)
        tar.addfile(info, io.BytesIO(payload))
    with pytest.raises(BundleError, match="outside its folder"):
        model_registry.unpack_archive(archive, tmp_path / "out")
    assert not (tmp_path / "evil").exists()


def test_zip_without_manifest_rejected(tmp_path):
    archive = tmp_path / "plain.zip"
    with zipfile.ZipFile(archive, "w") as bundle_zip:
        bundle_zip.writestr("weights.bin", b"123")
    with pytest.raises(BundleError, match="no manifest.json"):
        model_registry.unpack_archive(archive, tmp_path / "out")


# Offline drop-in and deletion.


def test_import_local_bundle_and_delete_cache(tmp_path):
    source = tmp_path / "downloaded" / "my-bundle"
    source.mkdir(parents=True)
    (source / "manifest.json").write_text(json.dumps({"name": "lidc", "version": "3.1"}))
    (source / "fold_0.safetensors").write_bytes(b"abc")
    cache = tmp_path / "cache"

    imported = model_registry.import_local_bundle(source, cache)

    assert imported == cache / "lidc-3.1"
    assert (imported / "fold_0.safetensors").read_bytes() == b"abc"
    entry = entry_for(None, None, name="lidc", version="3.1")
    assert model_registry.cached_bundle(entry, cache) == imported

    (cache / "unfinished.zip.part").write_bytes(b"x")
    (cache / "notes.txt").write_text("keep me")
    (cache / "other-folder").mkdir()

    deleted = model_registry.delete_cached_models(cache)

    assert sorted(path.name for path in deleted) == ["lidc-3.1", "unfinished.zip.part"]
    assert (cache / "notes.txt").exists()
    assert (cache / "other-folder").exists()
    assert source.exists(), "the original bundle folder must stay"


def test_import_folder_without_manifest_rejected(tmp_path):
    with pytest.raises(BundleError, match="contains no manifest.json"):
        model_registry.import_local_bundle(tmp_path, tmp_path / "cache")
