"""The layout of a finished build directory, shared by build, verify, boot, ssh, conformance and upload.

packer/output/BUILD_NAME+kube-KUBERNETES_SEMVER/
  NAME.qcow2              compressed qcow2 (NAME = BUILD_NAME+kube-KUBERNETES_SEMVER)
  NAME.qcow2.sha256       bare hex
  NAME.ova                OVF + stream-optimized VMDK + .mf, as a tar
  NAME.ova.sha256         bare hex, as image-builder writes it
  NAME.packages           every installed package and version, read from the image
  NAME.spdx.json          the SPDX 2.3 SBOM (kiln.artifacts.sbom)
  packer-manifest.json    Packer's manifest; builds[-1].custom_data holds kiln's provenance
  config.json             the resolved config: {"key": {"value": ..., "origin": "file"}}
  build.log               the whole build log
  goss/                   verify reports (report.json, junit.xml); tree-phase.json, what the build phase
                          passed in the tree or on the VM runner's disk at rest (kiln.goss.treephase)
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kiln import __version__
from kiln.core import inputs
from kiln.core.errors import InputError

MANIFEST = "packer-manifest.json"
CONFIG = "config.json"
LOG = "build.log"

log = logging.getLogger(__name__)


# --- the writing half of the contract: sidecars, provenance, manifest -------------------------------------


def sha256_file(path: Path, chunk: int = 8 * 1024 * 1024) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def write_sha256(path: Path) -> str:
    digest = sha256_file(path)
    Path(f"{path}.sha256").write_text(digest)  # bare hex, as image-builder writes it
    return digest


def custom_data(values: Mapping[str, Any], input_hash: str, built: float | None = None) -> dict[str, str]:
    """kiln's provenance in packer-manifest.json builds[-1].custom_data (strings, as Packer writes them):
    kiln's keys plus image-builder's, so that scripts written for image-builder's manifests keep working."""
    when = time.time() if built is None else built
    semver = str(values["kubernetes_semver"])
    roles = bool(values.get("extra_roles_before") or values.get("extra_roles_after"))
    return {
        # kiln's own
        "build_name": str(values["build_name"]),
        "kubernetes_semver": semver,
        "os_name": str(values.get("os_name", "")),
        "os_version": str(values.get("os_version", "")),
        "firmware": str(values.get("firmware", "bios")),
        "kiln_version": __version__,
        "input_hash": input_hash,
        "ssh_username": str(values.get("ssh_username", "builder")),
        # image-builder's names
        "build_date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(when)),
        "build_timestamp": str(int(when)),
        "build_type": "node",
        "containerd_version": str(values.get("containerd_version", "")),
        "custom_role": "true" if roles else "false",
        "disk_size": str(values.get("disk_size", "")),
        "distro_arch": "amd64",
        "distro_name": str(values.get("os_name", "")),
        "distro_version": str(values.get("os_version", "")),
        "guest_os_type": str(values.get("guest_os_type", "")),
        "ib_version": f"kiln-{__version__}",
        "kubernetes_cni_semver": str(values.get("cni_plugins_version", "")),
        "kubernetes_source_type": str(values.get("kubernetes_source_type", "")),
        "kubernetes_typed_version": f"kube-{semver}",
    }


def write_manifest(path: Path, name: str, files: list[Path], data: dict[str, str], builder: str) -> None:
    """Merge kiln's custom_data and the final artifact list into Packer's manifest (or write one).

    Keeps Packer's own fields (builder_type, packer_run_uuid, build_time) when the post-processor wrote them.
    """
    manifest: dict[str, Any] = {"builds": [], "last_run_uuid": ""}
    if path.is_file():
        try:
            manifest = json.loads(path.read_text())
        except ValueError:
            log.warning("%s: unreadable Packer manifest, rewriting it", path)
    builds = manifest.setdefault("builds", [])
    if not builds:
        run_uuid = str(uuid.uuid4())
        builds.append(
            {
                "name": name,
                "builder_type": builder,
                "build_time": int(time.time()),
                "packer_run_uuid": run_uuid,
            }
        )
        manifest["last_run_uuid"] = run_uuid
    last = builds[-1]
    last["files"] = [{"name": _relative(f, path.parent), "size": f.stat().st_size} for f in files]
    last["artifact_id"] = name
    merged = dict(last.get("custom_data") or {})
    merged.update(data)
    last["custom_data"] = merged
    path.write_text(json.dumps(manifest, indent=2) + "\n")


def _relative(f: Path, root: Path) -> str:
    try:
        return str(f.resolve().relative_to(root.resolve()))
    except ValueError:
        return f.name


def artifact_name(build_name: str, kubernetes_semver: str) -> str:
    return f"{build_name}+kube-{kubernetes_semver}"


@dataclass(frozen=True)
class BuildDir:
    path: Path
    name: str
    custom_data: dict[str, Any]
    config: dict[str, Any]

    @classmethod
    def open(cls, path: str | Path) -> BuildDir:
        """Read a finished build directory; InputError (exit 2) names what is missing or malformed."""
        root = Path(path)
        if not root.is_dir():
            raise InputError(f"{root}: not a build directory (does not exist)")
        manifest_path = root / MANIFEST
        if not manifest_path.is_file():
            raise InputError(
                f"{manifest_path}: missing; {root} is not a finished kiln build",
                hint="build one with `make build-qemu-debian-12`",
            )
        manifest = inputs.read_json_object(manifest_path, "Packer manifest")
        try:
            custom = dict(manifest["builds"][-1]["custom_data"])
        except (ValueError, KeyError, IndexError, TypeError) as exc:
            raise InputError(
                f"{manifest_path}: malformed Packer manifest (no builds[-1].custom_data)"
            ) from exc
        for key in ("build_name", "kubernetes_semver"):
            if not custom.get(key) or not isinstance(custom[key], str):
                raise InputError(f"{manifest_path}: builds[-1].custom_data.{key} is missing or not a string")
        name = artifact_name(custom["build_name"], custom["kubernetes_semver"])
        if "/" in name or name.startswith(".") or not name.isprintable():
            raise InputError(f"{manifest_path}: custom_data names {inputs.clip(name)}, not a plain file name")
        config_path = root / CONFIG
        raw: dict[str, Any] = {}
        if config_path.is_file() or config_path.is_symlink():
            raw = inputs.read_json_object(config_path, "build config")
        return cls.of(root, name, custom, raw)

    @classmethod
    def of(cls, path: Path, name: str, custom_data: dict[str, Any], config_json: dict[str, Any]) -> BuildDir:
        """A build directory from what its manifest's custom_data and its config.json (kiln's form:
        {"key": {"value": V, ...}}, or flat) hold: `open` reads them; the build pipeline has them in hand
        before it writes them (its verify runs before the manifest is written)."""
        config = {
            k: (v["value"] if isinstance(v, dict) and "value" in v else v) for k, v in config_json.items()
        }
        return cls(path, name, custom_data, config)

    @property
    def kubernetes_semver(self) -> str:
        return str(self.custom_data["kubernetes_semver"])

    @property
    def build_name(self) -> str:
        return str(self.custom_data["build_name"])

    @property
    def qcow2(self) -> Path:
        return self.path / f"{self.name}.qcow2"

    @property
    def ova(self) -> Path:
        return self.path / f"{self.name}.ova"

    @property
    def sbom(self) -> Path:
        return self.path / f"{self.name}.spdx.json"

    @property
    def firmware(self) -> str:
        """'bios' or 'efi', as the image declares."""
        return str(self.custom_data.get("firmware") or self.config.get("firmware") or "bios")

    @property
    def log(self) -> Path:
        return self.path / LOG

    def values(self) -> dict[str, Any]:
        """The build's resolved config (config.json) with the manifest's provenance filling its gaps: the one
        rule every command that needs a build's values uses (config.json wins)."""
        return {**self.custom_data, **self.config}

    def setting(self, key: str, default: Any = None) -> Any:
        return self.config.get(key, default)
