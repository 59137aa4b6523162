"""The layout of a finished build directory, shared by build, verify, boot, ssh, conformance and upload.

packer/output/BUILD_NAME+kube-KUBERNETES_SEMVER/
  NAME.qcow2              compressed qcow2 (NAME = BUILD_NAME+kube-KUBERNETES_SEMVER)
  NAME.qcow2.sha256       bare hex
  NAME.ova                OVF + stream-optimized VMDK + .mf, as a tar
  NAME.ova.sha256         bare hex, as image-builder writes it
  NAME.packages           every installed package and version, read from the image
  packer-manifest.json    Packer's manifest; builds[-1].custom_data holds kiln's provenance
  config.json             the resolved config: {"key": {"value": ..., "origin": "file"}}
  build.log               the whole build log
  goss/                   verify reports (report.json, junit.xml)
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from . import inputs
from .errors import InputError

MANIFEST = "packer-manifest.json"
CONFIG = "config.json"
LOG = "build.log"


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
        config: dict[str, Any] = {}
        config_path = root / CONFIG
        if config_path.is_file() or config_path.is_symlink():
            raw = inputs.read_json_object(config_path, "build config")
            config = {k: (v["value"] if isinstance(v, dict) and "value" in v else v) for k, v in raw.items()}
        return cls(root, name, custom, config)

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
    def firmware(self) -> str:
        """'bios' or 'efi', as the image declares."""
        return str(self.custom_data.get("firmware") or self.config.get("firmware") or "bios")

    @property
    def log(self) -> Path:
        return self.path / LOG

    def setting(self, key: str, default: Any = None) -> Any:
        return self.config.get(key, default)
