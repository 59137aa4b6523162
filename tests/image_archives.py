"""Container image archives for tests: an OCI image layout and a `docker save` archive, each of one layer
holding one small file, as `ctr images import` takes them (image-builder's kubernetes role imports the
Kubernetes release's image tars, which are `docker save` archives)."""

from __future__ import annotations

import hashlib
import io
import json
import tarfile
from pathlib import Path


def _add(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tar.addfile(info, io.BytesIO(data))


def _layer(name: str) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as layer:
        _add(layer, f"usr/share/kiln-test/{name}", f"kiln test image {name}\n".encode())
    return buf.getvalue()


def _config(layer: bytes) -> bytes:
    diff_id = "sha256:" + hashlib.sha256(layer).hexdigest()
    return json.dumps({
        "architecture": "amd64", "os": "linux", "config": {"Entrypoint": ["/bin/true"]},
        "rootfs": {"type": "layers", "diff_ids": [diff_id]},
    }).encode()  # fmt: skip


def oci(path: Path, ref: str) -> str:
    """An OCI image layout archive of `ref` (registry/name:tag) at `path`; returns its layer's digest."""
    layer = _layer(ref.rsplit("/", 1)[-1])
    config = _config(layer)

    def blob(tar: tarfile.TarFile, data: bytes) -> dict[str, object]:
        digest = "sha256:" + hashlib.sha256(data).hexdigest()
        _add(tar, "blobs/sha256/" + digest.removeprefix("sha256:"), data)
        return {"digest": digest, "size": len(data)}

    with tarfile.open(path, "w") as tar:
        layer_desc = {"mediaType": "application/vnd.oci.image.layer.v1.tar", **blob(tar, layer)}
        manifest = json.dumps({
            "schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": {"mediaType": "application/vnd.oci.image.config.v1+json", **blob(tar, config)},
            "layers": [layer_desc],
        }).encode()  # fmt: skip
        index = {
            "schemaVersion": 2,
            "manifests": [{
                "mediaType": "application/vnd.oci.image.manifest.v1+json", **blob(tar, manifest),
                "platform": {"architecture": "amd64", "os": "linux"},
                "annotations": {"org.opencontainers.image.ref.name": ref},
            }],
        }  # fmt: skip
        _add(tar, "oci-layout", b'{"imageLayoutVersion":"1.0.0"}')
        _add(tar, "index.json", json.dumps(index).encode())
    return str(layer_desc["digest"])


def docker(path: Path, repo: str, tag: str) -> str:
    """A `docker save` archive of `repo:tag` at `path`; returns its layer's digest."""
    layer = _layer(repo.rsplit("/", 1)[-1])
    config = _config(layer)
    layer_id, config_id = hashlib.sha256(layer).hexdigest(), hashlib.sha256(config).hexdigest()
    with tarfile.open(path, "w") as tar:
        _add(tar, f"{layer_id}/layer.tar", layer)
        _add(tar, f"{config_id}.json", config)
        manifest = [
            {
                "Config": f"{config_id}.json",
                "RepoTags": [f"{repo}:{tag}"],
                "Layers": [f"{layer_id}/layer.tar"],
            }
        ]
        _add(tar, "manifest.json", json.dumps(manifest).encode())
        _add(tar, "repositories", json.dumps({repo: {tag: layer_id}}).encode())
    return "sha256:" + layer_id
