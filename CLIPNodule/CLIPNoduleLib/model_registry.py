"""Model registry of the CLIPNodule module: which bundles exist, where they are cached, how they arrive.

No Qt and no MRML: standard library only, plus `slicer.app.cachePath` when it runs
inside the Slicer application. The registry is `Resources/model_registry.json` of the
extension. Each entry has name, version, description, url, sha256, size, licence and
intended_use, and optionally local_path (a bundle shipped with the extension, relative
to the Resources folder). Downloads are checked against the sha256 before unpacking.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import shutil
import sys
import tarfile
import tempfile
import urllib.error
import urllib.request
import zipfile
from pathlib import Path
from typing import Callable

from clipnodule.errors import BundleError

logger = logging.getLogger(__name__)

RESOURCES_DIR = Path(__file__).resolve().parents[2] / "Resources"
REGISTRY_FILE_NAME = "model_registry.json"
MANIFEST_NAME = "manifest.json"
REQUIRED_FIELDS = ("name", "version", "description", "url", "sha256", "size", "licence", "intended_use")
CHUNK_BYTES = 1 << 20
DOWNLOAD_TIMEOUT_S = 60.0

ProgressCallback = Callable[[int, int | None], None]


@dataclasses.dataclass(frozen=True)
class ModelEntry:
    """One registry entry. url, sha256 and size are None for a bundle shipped with the extension."""

    name: str
    version: str
    description: str
    url: str | None
    sha256: str | None
    size: int | None
    licence: str
    intended_use: str
    local_path: str | None = None

    @property
    def cache_folder_name(self) -> str:
        """Folder name of this entry in the model cache: "<name>-<version>"."""
        return f"{self.name}-{self.version}"


@dataclasses.dataclass(frozen=True)
class ModelRegistry:
    """The registry entries, in file order, and the name of the default entry."""

    entries: tuple[ModelEntry, ...]
    default_name: str
    path: Path

    @property
    def names(self) -> tuple[str, ...]:
        """Entry names in file order."""
        return tuple(entry.name for entry in self.entries)

    def entry(self, name: str) -> ModelEntry:
        """Return the entry called `name`, or raise BundleError listing the known names."""
        for entry in self.entries:
            if entry.name == name:
                return entry
        raise BundleError(f"The model {name!r} is not in {self.path}; known models: {', '.join(self.names)}.")

    @property
    def default(self) -> ModelEntry:
        """The default entry (the demo model shipped with the extension)."""
        return self.entry(self.default_name)


def registry_path() -> Path:
    """Return the registry file: $CLIPNODULE_MODEL_REGISTRY, else Resources/model_registry.json."""
    configured = os.environ.get("CLIPNODULE_MODEL_REGISTRY")
    return Path(configured) if configured else RESOURCES_DIR / REGISTRY_FILE_NAME


def load_registry(path: str | os.PathLike | None = None) -> ModelRegistry:
    """Read and check a registry JSON file; raise BundleError naming the file and the problem."""
    path = Path(path) if path is not None else registry_path()
    try:
        document = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise BundleError(f"The model registry {path} does not exist; reinstall the extension.") from None
    except json.JSONDecodeError as error:
        raise BundleError(f"The model registry {path} is not valid JSON ({error}).") from None

    entries = []
    for position, item in enumerate(document.get("models", [])):
        missing = [field for field in REQUIRED_FIELDS if field not in item]
        if missing:
            raise BundleError(f"Entry {position} of {path} lacks the field(s) {', '.join(missing)}.")
        if item["url"] and not item["sha256"]:
            raise BundleError(f"The model {item['name']!r} in {path} has a url but no sha256 to check it against.")
        entries.append(
            ModelEntry(
                name=str(item["name"]),
                version=str(item["version"]),
                description=str(item["description"]),
                url=item["url"] or None,
                sha256=str(item["sha256"]).lower() if item["sha256"] else None,
                size=int(item["size"]) if item["size"] is not None else None,
                licence=str(item["licence"]),
                intended_use=str(item["intended_use"]),
                local_path=item.get("local_path") or None,
            )
        )
    if not entries:
        raise BundleError(f"The model registry {path} lists no models.")
    default_name = str(document.get("default") or entries[0].name)
    registry = ModelRegistry(entries=tuple(entries), default_name=default_name, path=path)
    registry.entry(default_name)
    return registry


def model_cache_dir() -> Path:
    """Return the folder where downloaded and imported bundles are kept.

    Order: $CLIPNODULE_MODEL_DIR; inside Slicer, <slicer.app.cachePath>/CLIPNodule/models;
    else the platform's user cache folder (Windows %LOCALAPPDATA%\\clipnodule\\models,
    macOS ~/Library/Caches/clipnodule/models, Linux $XDG_CACHE_HOME or
    ~/.cache/clipnodule/models).
    """
    configured = os.environ.get("CLIPNODULE_MODEL_DIR")
    if configured:
        return Path(configured).expanduser()

    try:
        import slicer

        return Path(slicer.app.cachePath) / "CLIPNodule" / "models"
    except (ImportError, AttributeError):
        pass

    if sys.platform.startswith("win"):
        base = Path(os.environ.get("LOCALAPPDATA", Path.home() / "AppData" / "Local"))
    elif sys.platform == "darwin":
        base = Path.home() / "Library" / "Caches"
    else:
        base = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache"))
    return base / "clipnodule" / "models"


def is_bundle_folder(folder: str | os.PathLike) -> bool:
    """Return True when `folder` contains a bundle manifest."""
    return (Path(folder) / MANIFEST_NAME).is_file()


def download_file(
    url: str,
    destination: str | os.PathLike,
    expected_sha256: str,
    expected_size: int | None = None,
    progress: ProgressCallback | None = None,
    should_cancel: Callable[[], bool] | None = None,
    chunk_bytes: int = CHUNK_BYTES,
    timeout_s: float = DOWNLOAD_TIMEOUT_S,
) -> Path:
    """Download `url` to `destination` in chunks and check its sha256; return the path.

    `progress(bytes_done, bytes_total_or_None)` is called after every chunk.
    `should_cancel()` returning True stops the download. The data goes to a ".part"
    file that is renamed only after the checksum matches; on any failure it is deleted
    and BundleError is raised.
    """
    destination = Path(destination)
    destination.parent.mkdir(parents=True, exist_ok=True)
    partial = destination.with_name(destination.name + ".part")
    digest = hashlib.sha256()
    done = 0
    try:
        with urllib.request.urlopen(url, timeout=timeout_s) as response, open(partial, "wb") as stream:
            header_size = response.headers.get("Content-Length")
            total = expected_size or (int(header_size) if header_size else None)
            while True:
                if should_cancel is not None and should_cancel():
                    raise BundleError(f"The download of {url} was cancelled.")
                chunk = response.read(chunk_bytes)
                if not chunk:
                    break
                stream.write(chunk)
                digest.update(chunk)
                done += len(chunk)
                if progress is not None:
                    progress(done, total)
    except (urllib.error.URLError, OSError) as error:
        partial.unlink(missing_ok=True)
        raise BundleError(
            f"Downloading {url} failed ({error}); check the network, or download the bundle elsewhere "
            "and add it with 'Local bundle folder...'."
        ) from None
    except BundleError:
        partial.unlink(missing_ok=True)
        raise

    actual = digest.hexdigest()
    if actual != expected_sha256.lower():
        partial.unlink(missing_ok=True)
        raise BundleError(
            f"The file downloaded from {url} has sha256 {actual}, but the registry expects "
            f"{expected_sha256.lower()}; it was deleted. The file on the server changed or the download "
            "was corrupted: retry, or ask the model provider for the correct checksum."
        )
    if expected_size is not None and done != expected_size:
        partial.unlink(missing_ok=True)
        raise BundleError(f"The file from {url} has {done} bytes, the registry expects {expected_size}.")
    os.replace(partial, destination)
    logger.info("Downloaded %s (%d bytes, sha256 %s) to %s", url, done, actual, destination)
    return destination


def _check_member_path(root: Path, name: str, archive: Path) -> None:
    target = (root / name).resolve()
    if target != root and root not in target.parents:
        raise BundleError(f"The archive {archive} contains the path {name!r} outside its folder; it was not unpacked.")


def unpack_archive(archive: str | os.PathLike, destination: str | os.PathLike) -> Path:
    """Unpack a .zip or .tar(.gz) model archive into `destination` and return the bundle folder.

    Members with absolute paths, "..", or links are rejected. The bundle folder is
    `destination` itself or its single subfolder, whichever contains manifest.json.
    """
    archive = Path(archive)
    destination = Path(destination)
    destination.mkdir(parents=True, exist_ok=True)
    root = destination.resolve()

    if zipfile.is_zipfile(archive):
        with zipfile.ZipFile(archive) as bundle_zip:
            for name in bundle_zip.namelist():
                _check_member_path(root, name, archive)
            bundle_zip.extractall(destination)
    elif tarfile.is_tarfile(archive):
        with tarfile.open(archive) as bundle_tar:
            members = bundle_tar.getmembers()
            for member in members:
                _check_member_path(root, member.name, archive)
                if not (member.isfile() or member.isdir()):
                    raise BundleError(f"The archive {archive} contains the link or device {member.name!r}; not unpacked.")
            bundle_tar.extractall(destination, members=members)
    else:
        raise BundleError(f"{archive} is neither a zip nor a tar archive; the registry url must point to one.")

    if is_bundle_folder(destination):
        return destination
    subfolders = [item for item in destination.iterdir() if item.is_dir()]
    if len(subfolders) == 1 and is_bundle_folder(subfolders[0]):
        return subfolders[0]
    raise BundleError(f"The archive {archive} contains no {MANIFEST_NAME}; it is not a CLIPNodule model bundle.")


def cached_bundle(entry: ModelEntry, cache_dir: str | os.PathLike | None = None) -> Path | None:
    """Return the bundle folder of `entry` if it is shipped or already in the cache, else None."""
    if entry.local_path:
        shipped = RESOURCES_DIR / entry.local_path
        if is_bundle_folder(shipped):
            return shipped
    folder = Path(cache_dir or model_cache_dir()) / entry.cache_folder_name
    if is_bundle_folder(folder):
        return folder
    if folder.is_dir():
        subfolders = [item for item in folder.iterdir() if item.is_dir() and is_bundle_folder(item)]
        if len(subfolders) == 1:
            return subfolders[0]
    return None


def ensure_bundle(
    entry: ModelEntry,
    cache_dir: str | os.PathLike | None = None,
    progress: ProgressCallback | None = None,
    should_cancel: Callable[[], bool] | None = None,
) -> Path:
    """Return the bundle folder of `entry`, downloading, checking and unpacking it on first use."""
    found = cached_bundle(entry, cache_dir)
    if found is not None:
        return found
    if not entry.url:
        raise BundleError(
            f"The model {entry.name!r} is not installed and has no download url; "
            f"put its bundle folder at {Path(cache_dir or model_cache_dir()) / entry.cache_folder_name}."
        )

    cache = Path(cache_dir or model_cache_dir())
    cache.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=cache, prefix=".download-") as scratch:
        archive_name = Path(urllib.request.url2pathname(entry.url.split("?")[0])).name or "bundle.zip"
        archive = download_file(
            entry.url, Path(scratch) / archive_name, entry.sha256 or "", entry.size, progress, should_cancel
        )
        unpacked = unpack_archive(archive, Path(scratch) / "unpacked")
        target = cache / entry.cache_folder_name
        if target.exists():
            shutil.rmtree(target)
        shutil.move(str(unpacked), str(target))
    logger.info("Installed model %s %s in %s", entry.name, entry.version, target)
    return target


def import_local_bundle(folder: str | os.PathLike, cache_dir: str | os.PathLike | None = None) -> Path:
    """Copy a bundle folder (offline drop-in) into the cache as "<name>-<version>" and return it.

    Name and version come from the bundle's manifest.json.
    """
    folder = Path(folder)
    if not is_bundle_folder(folder):
        raise BundleError(f"{folder} contains no {MANIFEST_NAME}; choose a CLIPNodule model bundle folder.")
    manifest = json.loads((folder / MANIFEST_NAME).read_text(encoding="utf-8"))
    name = str(manifest.get("name") or folder.name)
    version = str(manifest.get("version") or "local")
    target = Path(cache_dir or model_cache_dir()) / f"{name}-{version}"
    if target.resolve() == folder.resolve():
        return target
    if target.exists():
        shutil.rmtree(target)
    shutil.copytree(folder, target)
    logger.info("Copied bundle %s into the model cache at %s", folder, target)
    return target


def delete_cached_models(cache_dir: str | os.PathLike | None = None) -> list[Path]:
    """Delete the bundles and unfinished downloads in the model cache; return what was deleted.

    Only bundle folders (with manifest.json, directly or one level down), ".download-*"
    scratch folders and "*.part" files are removed, so a cache folder pointed at a
    shared directory loses nothing else. Bundles shipped with the extension stay.
    """
    cache = Path(cache_dir or model_cache_dir())
    deleted: list[Path] = []
    if not cache.is_dir():
        return deleted
    for item in sorted(cache.iterdir()):
        if item.is_dir() and (
            item.name.startswith(".download-")
            or is_bundle_folder(item)
            or any(is_bundle_folder(child) for child in item.iterdir() if child.is_dir())
        ):
            shutil.rmtree(item)
            deleted.append(item)
        elif item.is_file() and item.name.endswith(".part"):
            item.unlink()
            deleted.append(item)
    logger.info("Deleted %d cached model item(s) from %s", len(deleted), cache)
    return deleted
