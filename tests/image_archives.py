"""Container image archives for tests: an OCI image layout and a `docker save` archive, as `ctr images import`
takes them (image-builder's kubernetes role imports the Kubernetes release's image tars, which are `docker
save` archives). By default one layer holding one small file; an OCI archive may have more layers, whose
`.wh.NAME` entries delete a lower layer's NAME and `.wh..wh..opq` hides a lower layer's directory content."""

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


def _layer(files: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as layer:
        for name, data in files.items():
            _add(layer, name, data)
    return buf.getvalue()


def _one_file(name: str) -> dict[str, bytes]:
    return {f"usr/share/kiln-test/{name}": f"kiln test image {name}\n".encode()}


def _config(*layers: bytes) -> bytes:
    diff_ids = ["sha256:" + hashlib.sha256(layer).hexdigest() for layer in layers]
    return json.dumps({
        "architecture": "amd64", "os": "linux", "config": {"Entrypoint": ["/bin/true"]},
        "rootfs": {"type": "layers", "diff_ids": diff_ids},
    }).encode()  # fmt: skip


def oci(path: Path, ref: str, layers: list[dict[str, bytes]] | None = None) -> str:
    """An OCI image layout archive of `ref` (registry/name:tag) at `path`, of `layers` (each its files by
    path) or one layer of one file; returns its last layer's digest."""
    tars = [_layer(files) for files in layers or [_one_file(ref.rsplit("/", 1)[-1])]]
    config = _config(*tars)

    def blob(tar: tarfile.TarFile, data: bytes) -> dict[str, object]:
        digest = "sha256:" + hashlib.sha256(data).hexdigest()
        _add(tar, "blobs/sha256/" + digest.removeprefix("sha256:"), data)
        return {"digest": digest, "size": len(data)}

    with tarfile.open(path, "w") as tar:
        descs = [{"mediaType": "application/vnd.oci.image.layer.v1.tar", **blob(tar, t)} for t in tars]
        manifest = json.dumps({
            "schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": {"mediaType": "application/vnd.oci.image.config.v1+json", **blob(tar, config)},
            "layers": descs,
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
    return str(descs[-1]["digest"])


def docker(path: Path, repo: str, tag: str) -> str:
    """A `docker save` archive of `repo:tag` at `path`; returns its layer's digest."""
    layer = _layer(_one_file(repo.rsplit("/", 1)[-1]))
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
