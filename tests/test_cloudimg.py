"""The cloud-image base (kiln.build.cloudimg) with real files and a real HTTP server: every checksum form,
the checksum files of Debian (GNU) and BSD style, the download checked as it streams and kept by digest,
and each fault named, with nothing left in the cache: a digest that does not match, a file that is not a
disk, a qcow2 with a backing file, an unreachable URL, a checksum file without the image. The VM test that
builds and boots a cloudimg target is test_cloudimg_vm.py."""

from __future__ import annotations

import functools
import hashlib
import http.server
import shutil
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from kiln.build import cloudimg
from kiln.core.errors import BuildError, InputError, UploadError
from kiln_runtime import RUNTIME

needs_qemu_img = pytest.mark.skipif(shutil.which("qemu-img") is None, reason="qemu-img (make deps) missing")


class _Quiet(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: object) -> None:  # noqa: A002 - the base class's name
        pass


@pytest.fixture
def served(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    """An HTTP server on 127.0.0.1 serving tmp_path/www."""
    www = tmp_path / "www"
    www.mkdir()
    handler = functools.partial(_Quiet, directory=str(www))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}", www
    server.shutdown()
    server.server_close()


def _qcow2(path: Path, backing: Path | None = None) -> Path:
    argv = ["qemu-img", "create", "-q", "-f", "qcow2"]
    argv += ["-b", str(backing), "-F", "qcow2"] if backing else []
    subprocess.run([*argv, str(path), "64M"], check=True)
    return path


def _raw_disk(path: Path) -> Path:
    with path.open("wb") as f:
        f.truncate(8 << 20)
    subprocess.run(["sfdisk", "--quiet", str(path)], input="label: gpt\nstart=2048, size=4096\n", text=True,
                   check=True)  # fmt: skip
    return path


def _sha(path: Path, algo: str = "sha256") -> str:
    return hashlib.new(algo, path.read_bytes()).hexdigest()


def test_checksum_forms_and_checksum_files(tmp_path: Path, served: tuple[str, Path]) -> None:
    base, www = served
    url = f"{base}/images/debian-12-genericcloud-amd64.qcow2"
    hexd = "ab" * 64
    assert cloudimg.resolve(url, f"sha512:{hexd}") == cloudimg.Digest("sha512", hexd)
    assert cloudimg.resolve(url, "CD" * 32) == cloudimg.Digest("sha256", "cd" * 32)  # type from the length
    (www / "SHA512SUMS").write_text(f"{'00' * 64}  other.qcow2\n{hexd}  debian-12-genericcloud-amd64.qcow2\n")
    assert cloudimg.resolve(url, f"file:{base}/SHA512SUMS") == cloudimg.Digest("sha512", hexd)
    (www / "BSD").write_text(f"SHA256 (debian-12-genericcloud-amd64.qcow2) = {'ef' * 32}\n")
    assert cloudimg.resolve(url, f"{base}/BSD") == cloudimg.Digest("sha256", "ef" * 32)  # a bare URL
    local = tmp_path / "SUMS"
    local.write_text(f"{'12' * 32} *debian-12-genericcloud-amd64.qcow2\n")
    assert cloudimg.resolve(url, f"file:{local}").hex == "12" * 32
    (www / "NOPE").write_text(f"{hexd}  another-image.qcow2\n")
    with pytest.raises(InputError, match=r"has no line for 'debian-12-genericcloud-amd64.qcow2'"):
        cloudimg.resolve(url, f"file:{base}/NOPE")
    with pytest.raises(UploadError, match=r"not found"):
        cloudimg.resolve(url, f"file:{base}/MISSING")
    for bad in ("", "none", "sha256:abc", "crc32:" + "ab" * 32):
        with pytest.raises(InputError, match="cloudimg_checksum"):
            cloudimg.resolve(url, bad)


@needs_qemu_img
def test_a_served_image_is_downloaded_checked_and_kept_by_digest(
    tmp_path: Path, served: tuple[str, Path]
) -> None:
    base, www = served
    image = _qcow2(www / "generic.qcow2")
    (www / "SHA256SUMS").write_text(f"{_sha(image)}  generic.qcow2\n")
    values = {"cloudimg_url": f"{base}/generic.qcow2", "cloudimg_checksum": f"file:{base}/SHA256SUMS"}
    said: list[str] = []
    got = cloudimg.ensure(values, tmp_path / "cache", say=said.append, runtime=RUNTIME)
    assert not got.cached and got.disk.read_bytes() == image.read_bytes()
    assert got.info["digest"] == f"sha256:{_sha(image)}" and got.info["format"] == "qcow2"
    image.unlink()  # the second build reads nothing from the server
    again = cloudimg.ensure(values, tmp_path / "cache", say=said.append, runtime=RUNTIME)
    assert again.cached and again.dir == got.dir
    # a raw disk (MBR/GPT) is converted to qcow2 for the overlays
    raw = _raw_disk(tmp_path / "raw.img")
    conv = cloudimg.ensure({"cloudimg_url": f"file://{raw}", "cloudimg_checksum": f"sha256:{_sha(raw)}"},
                           tmp_path / "cache", say=said.append, runtime=RUNTIME)  # fmt: skip
    assert conv.info["format"] == "raw" and conv.disk.read_bytes()[:4] == cloudimg.QCOW2_MAGIC
    # a cached image that is not the bytes kept (a restored cache, a failing disk) is downloaded again
    assert conv.info["digests"] == {cloudimg.DISK: _sha(conv.disk)}
    conv.disk.write_bytes(conv.disk.read_bytes()[:4096])
    redone = cloudimg.ensure({"cloudimg_url": f"file://{raw}", "cloudimg_checksum": f"sha256:{_sha(raw)}"},
                             tmp_path / "cache", say=said.append, runtime=RUNTIME)  # fmt: skip
    assert not redone.cached and redone.disk.stat().st_size > 4096
    (damaged,) = [line for line in said if "damaged" in line]
    assert damaged.startswith(f"base: the cached cloud image is damaged ({conv.disk}: not the bytes stored")
    assert damaged.endswith("; 4096 bytes)): removed; downloading it again"), damaged
    for broken in ("disk gone", "info.json half written"):  # an entry a lookup refuses is replaced
        if broken == "disk gone":
            redone.disk.unlink()
        else:
            (redone.dir / "info.json").write_text('{"url": ')
        said.clear()
        again = cloudimg.ensure({"cloudimg_url": f"file://{raw}", "cloudimg_checksum": f"sha256:{_sha(raw)}"},
                                tmp_path / "cache", say=said.append, runtime=RUNTIME)  # fmt: skip
        assert not again.cached and again.disk.is_file(), broken
        why = redone.disk if broken == "disk gone" else f"{redone.dir / 'info.json'}: missing or unreadable"
        why = f"{why}: missing" if broken == "disk gone" else why
        assert f"({why}): removed; downloading it again" in said[0], said


@needs_qemu_img
def test_each_fault_is_named_and_leaves_nothing_in_the_cache(
    tmp_path: Path, served: tuple[str, Path]
) -> None:
    base, www = served
    cache = tmp_path / "cache"
    image = _qcow2(www / "generic.qcow2")

    def ensure(url: str, checksum: str) -> None:
        cloudimg.ensure({"cloudimg_url": url, "cloudimg_checksum": checksum}, cache, say=lambda _t: None,
                        runtime=RUNTIME)  # fmt: skip

    with pytest.raises(BuildError, match=r"sha256 [0-9a-f]{64}, but cloudimg_checksum says 0{64}") as err:
        ensure(f"{base}/generic.qcow2", "sha256:" + "0" * 64)
    assert err.value.exit_code == 1
    (www / "page.html").write_text("<html><body>Not the image you are looking for</body></html>\n" * 40)
    with pytest.raises(InputError, match=r"not a qcow2 or raw disk image \(it starts with '<html>") as bad:
        ensure(f"{base}/page.html", f"sha256:{_sha(www / 'page.html')}")
    assert bad.value.exit_code == 2
    iso = www / "installer.iso"  # an isohybrid installer: an MBR, and ISO 9660's CD001 at 0x8001
    iso.write_bytes(b"\0" * 510 + b"\x55\xaa" + b"\0" * (0x8001 - 512) + b"CD001" + b"\0" * 4000)
    with pytest.raises(InputError, match=r"an ISO 9660 image, not a cloud image"):
        ensure(f"{base}/installer.iso", f"sha256:{_sha(iso)}")
    layered = _qcow2(www / "layered.qcow2", backing=image)
    with pytest.raises(InputError, match=r"a qcow2 with a backing file"):
        ensure(f"{base}/layered.qcow2", f"sha256:{_sha(layered)}")
    with pytest.raises(UploadError, match=r"connection refused by 127.0.0.1:9"):
        ensure("http://127.0.0.1:9/generic.qcow2", f"sha256:{_sha(image)}")
    with pytest.raises(UploadError, match=r"not found"):
        ensure(f"{base}/gone.qcow2", f"sha256:{_sha(image)}")
    leftovers = [p.name for p in (cache / cloudimg.ROOT).iterdir() if not p.name.endswith(".lock")]
    assert leftovers == [], leftovers
