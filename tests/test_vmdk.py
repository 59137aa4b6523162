"""kiln.artifacts.vmdk: the OVA's stream-optimized VMDK written from a qcow2's clusters, checked against real
qemu-img: it reads the same disk, and its layout is the one `qemu-img convert -O vmdk -o
subformat=streamOptimized` writes for that disk, but for where the grains fall."""

from __future__ import annotations

import json
import os
import random
import shutil
import struct
import subprocess
import zlib
from pathlib import Path

import pytest

from kiln.artifacts import ova, vmdk
from kiln.config.typed import Settings
from kiln.core.errors import BuildError
from kiln_runtime import RUNTIME

MIB = 1 << 20
SIZE = 288 * MIB  # 4608 grains: nine grain tables, the last one partly used


def _write(disk: Path, offset: int, data: bytes) -> None:
    with open(disk, "r+b") as fh:
        fh.seek(offset)
        fh.write(data)


@pytest.fixture(scope="module")
def raw(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A sparse disk with each kind of cluster a build's disk has: text that deflates well (one grain a
    few bytes long, one whole), random bytes the qcow2 stores uncompressed, a cluster of zeros written out,
    data across a grain-table boundary and in the disk's last grain."""
    disk = tmp_path_factory.mktemp("raw") / "disk.raw"
    with open(disk, "wb") as fh:
        fh.truncate(SIZE)
    rng = random.Random(7)
    _write(disk, 0, b"kiln")
    _write(disk, 1 * MIB, b"".join(b"line %d of a config file\n" % i for i in range(9000))[: 3 * 65536])
    _write(disk, 5 * MIB, rng.randbytes(2 * 65536 + 4096))  # incompressible: stored as is in the qcow2
    _write(disk, 7 * MIB, bytes(65536))  # zeros written out: no grain
    _write(disk, 32 * MIB - 1000, rng.randbytes(1000) + b"spans two grain tables" * 100)
    _write(disk, SIZE - 700, b"the last grain" * 50)
    return disk


def _convert(src: Path, out: Path, *options: str) -> Path:
    subprocess.run(["qemu-img", "convert", *options, str(src), str(out)], check=True)
    return out


@pytest.fixture(scope="module")
def qcow2(raw: Path) -> Path:
    return _convert(raw, raw.with_name("disk.qcow2"), "-c", "-O", "qcow2")


def _compare(a: Path, b: Path) -> None:
    result = subprocess.run(["qemu-img", "compare", str(a), str(b)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def _info(path: Path) -> dict:
    return json.loads(subprocess.run(["qemu-img", "info", "--output=json", str(path)], check=True,
                                     capture_output=True, text=True).stdout)  # fmt: skip


def _walk(data: bytes, layout: vmdk.Layout) -> list[tuple[int, int, bytes]]:
    """(sector, grain's first disk sector, its zlib stream) for each grain marker after the metadata."""
    grains = []
    at = layout.grain_offset * 512
    while at + 12 <= len(data):
        lba, size = struct.unpack_from("<QI", data, at)
        if size == 0:
            break
        grains.append((at // 512, lba, data[at + 12 : at + 12 + size]))
        at += -(-(12 + size) // 512) * 512
    return grains


def _tables(data: bytes, layout: vmdk.Layout, gd_offset: int) -> list[int]:
    gd = struct.unpack_from(f"<{layout.gt_count}I", data, gd_offset * 512)
    return [e for gt in gd for e in struct.unpack_from("<512I", data, gt * 512)]


def test_the_vmdk_is_the_disk_as_qemu_reads_it(qcow2: Path, raw: Path, tmp_path: Path) -> None:
    out = tmp_path / "disk1.vmdk"
    written = vmdk.write_from_qcow2(qcow2, out, vmdk.content_id("seed"))
    _compare(raw, out)
    check = subprocess.run(["qemu-img", "check", str(out)], capture_output=True, text=True)
    assert check.returncode == 0, check.stdout + check.stderr
    info = _info(out)
    assert info["format"] == "vmdk" and info["virtual-size"] == SIZE
    assert info["format-specific"]["data"]["create-type"] == "streamOptimized"
    assert info["format-specific"]["data"]["extents"][0]["compressed"] is True
    assert info["format-specific"]["data"]["cid"] == int(vmdk.content_id("seed"), 16)
    # the random clusters were stored uncompressed in the qcow2 and are the only ones deflated here
    assert written.deflated == 2 and written.grains == 10 and written.size == out.stat().st_size


def test_the_layout_is_qemu_imgs_but_for_where_the_grains_fall(
    qcow2: Path, raw: Path, tmp_path: Path
) -> None:
    """The first 21 sectors (header and descriptor, qemu-img's random CID set as kiln sets it) and the
    grain directories are byte for byte qemu-img's; the same grains are written, in the same order, and
    each inflates to qemu-img's grain; only their lengths, so the grain tables' entries, differ."""
    (tmp_path / "qemu").mkdir()
    (tmp_path / "kiln").mkdir()
    theirs = _convert(raw, tmp_path / "qemu" / "d.vmdk", "-O", "vmdk", "-o", "subformat=streamOptimized")
    ova.fix_content_id(theirs, "seed")
    ours = tmp_path / "kiln" / "d.vmdk"
    vmdk.write_from_qcow2(qcow2, ours, vmdk.content_id("seed"))
    a, b = theirs.read_bytes(), ours.read_bytes()
    layout = vmdk.Layout(SIZE // 512)
    assert a[: 21 * 512] == b[: 21 * 512]
    for gd in (layout.rgd_offset, layout.gd_offset):
        assert (
            a[gd * 512 : gd * 512 + layout.gd_sectors * 512]
            == b[gd * 512 : gd * 512 + layout.gd_sectors * 512]
        )
    assert b[layout.gd_offset * 512 + layout.gd_sectors * 512 : layout.grain_offset * 512].strip(b"\0")
    qemu_grains, kiln_grains = _walk(a, layout), _walk(b, layout)
    assert [g[1] for g in kiln_grains] == [g[1] for g in qemu_grains]
    for (_, lba, theirs_stream), (sector, _, ours_stream) in zip(qemu_grains, kiln_grains, strict=True):
        assert zlib.decompress(ours_stream) == zlib.decompress(theirs_stream), lba
        assert _tables(b, layout, layout.gd_offset)[lba // 128] == sector
    assert _tables(b, layout, layout.rgd_offset) == _tables(b, layout, layout.gd_offset)
    assert [i for i, e in enumerate(_tables(a, layout, layout.gd_offset)) if e] == [
        i for i, e in enumerate(_tables(b, layout, layout.gd_offset)) if e
    ]
    assert b[-512:] == bytes(512), "an end-of-stream marker closes the stream"


def test_the_qcow2s_deflate_streams_are_the_grains(qcow2: Path, tmp_path: Path) -> None:
    """What saves the second compression: each grain of a compressed cluster carries the qcow2's own
    deflate stream, found where the qcow2's L2 entry says."""
    out = vmdk.write_from_qcow2(qcow2, tmp_path / "d.vmdk", "0") and tmp_path / "d.vmdk"
    image = qcow2.read_bytes()
    grains = _walk(out.read_bytes(), vmdk.Layout(SIZE // 512))
    reused = [stream for _, _, stream in grains if stream[2:-4] in image]
    assert len(reused) == len(grains) - 2  # all but the two random clusters, deflated here


def test_the_same_qcow2_makes_the_same_bytes(qcow2: Path, tmp_path: Path) -> None:
    one = tmp_path / "one" / "d.vmdk"
    two = tmp_path / "two" / "d.vmdk"
    one.parent.mkdir()
    two.parent.mkdir()
    vmdk.write_from_qcow2(qcow2, one, vmdk.content_id("x"))
    vmdk.write_from_qcow2(qcow2, two, vmdk.content_id("x"))
    assert one.read_bytes() == two.read_bytes()


def test_a_large_disks_descriptor_is_qemu_imgs(tmp_path: Path) -> None:
    """A 20 GiB disk (the default disk_size): more cylinders than an IDE disk has (qemu-img writes them
    all), and grain tables enough for five sectors of grain directory."""
    (tmp_path / "qemu").mkdir()
    (tmp_path / "kiln").mkdir()
    big = tmp_path / "big.raw"
    with open(big, "wb") as fh:
        fh.truncate(20 << 30)
    _write(big, (20 << 30) - 65536, b"end" * 1000)
    theirs = _convert(big, tmp_path / "qemu" / "d.vmdk", "-O", "vmdk", "-o", "subformat=streamOptimized")
    ova.fix_content_id(theirs, "s")
    ours = tmp_path / "kiln" / "d.vmdk"
    qcow2 = _convert(big, tmp_path / "big.qcow2", "-c", "-O", "qcow2")
    vmdk.write_from_qcow2(qcow2, ours, vmdk.content_id("s"))
    layout = vmdk.Layout((20 << 30) // 512)
    assert layout.gd_sectors == 5
    a, b = theirs.read_bytes(), ours.read_bytes()
    assert b'ddb.geometry.cylinders = "41610"' in b[512 : 21 * 512]
    metadata = layout.gd_offset * 512 + layout.gd_sectors * 512  # the header to the grain directory
    assert (
        a[: layout.rgd_offset * 512 + layout.gd_sectors * 512]
        == b[: layout.rgd_offset * 512 + layout.gd_sectors * 512]
    )
    assert a[layout.gd_offset * 512 : metadata] == b[layout.gd_offset * 512 : metadata]
    _compare(big, ours)


def test_clusters_the_qcow2_marks_as_zeros_are_no_grains(raw: Path, tmp_path: Path) -> None:
    """A version 3 qcow2's zero flag (here over clusters that held data, so their L2 entries may keep an
    offset): no grain for them, and the disk reads as zeros there."""
    source = _convert(raw, tmp_path / "d.qcow2", "-O", "qcow2")
    subprocess.run(["qemu-io", "-f", "qcow2", "-c", "write -z 1M 192K", str(source)], check=True,
                   capture_output=True)  # fmt: skip
    expected = shutil.copy(raw, tmp_path / "expected.raw")
    _write(expected, 1 * MIB, bytes(3 * 65536))
    written = vmdk.write_from_qcow2(source, tmp_path / "d.vmdk", "0")
    assert written.grains == 7
    _compare(expected, tmp_path / "d.vmdk")


@pytest.mark.parametrize("options", [["-O", "qcow2"], ["-c", "-O", "qcow2", "-o", "compat=0.10"]])
def test_an_uncompressed_and_a_version_2_qcow2(raw: Path, tmp_path: Path, options: list[str]) -> None:
    source = _convert(raw, tmp_path / "d.qcow2", *options)
    assert vmdk.unreadable_reason(source) == ""
    vmdk.write_from_qcow2(source, tmp_path / "d.vmdk", "0")
    _compare(raw, tmp_path / "d.vmdk")


def test_what_it_cannot_read_is_named_and_goes_to_qemu_img(raw: Path, qcow2: Path, tmp_path: Path) -> None:
    def create(name: str, *options: str, size: str = "64M") -> Path:
        path = tmp_path / name
        subprocess.run(["qemu-img", "create", "-q", *options, str(path), size], check=True)
        return path

    cases = {
        create(
            "backed.qcow2", "-f", "qcow2", "-b", str(qcow2), "-F", "qcow2", size=str(SIZE)
        ): "a backing file",
        create("small.qcow2", "-f", "qcow2", "-o", "cluster_size=4096"): "4096-byte clusters",
        create("zstd.qcow2", "-f", "qcow2", "-o", "compression_type=zstd"): "0x8 (a compression type other",
        create("odd.qcow2", "-f", "qcow2", size="1000K"): "not whole 64 KB grains",
        raw: "not a qcow2",
        tmp_path / "missing.qcow2": "unreadable",
    }
    for path, reason in cases.items():
        assert reason in vmdk.unreadable_reason(path), path
        with pytest.raises(BuildError, match=f"{path}: kiln cannot write a VMDK from it"):
            vmdk.write_from_qcow2(path, tmp_path / "x.vmdk", "0")
    # build_ova takes qemu-img's way for them, and still sets the CID from its input hash
    heard: list[str] = []
    settings = Settings.from_values({})
    out = ova.build_ova(
        raw, tmp_path / "raw.ova", "n", settings, input_hash="h", say=heard.append, runtime=RUNTIME
    )
    assert "by qemu-img convert" in heard[0] and "not a qcow2" in heard[0]
    shutil.unpack_archive(out, tmp_path / "unpacked", "tar")
    assert _info(tmp_path / "unpacked" / "n-disk1.vmdk")["format-specific"]["data"]["cid"] == int(
        vmdk.content_id("h"), 16
    )
    _compare(raw, tmp_path / "unpacked" / "n-disk1.vmdk")
    heard.clear()
    ova.build_ova(qcow2, tmp_path / "q.ova", "n", settings, say=heard.append, runtime=RUNTIME)
    assert "from the qcow2's clusters" in heard[0] and "10 grains, 2 of them" in heard[0]


def _first_compressed_cluster(path: Path, last: bool = False) -> tuple[int, int, int]:
    """(file offset, length, guest byte) of the qcow2's first (or, in the file, last) compressed cluster's
    stream."""
    data = path.read_bytes()
    l1_size, l1_offset = struct.unpack_from(">IQ", data, 36)
    found = []
    for i, l1 in enumerate(struct.unpack_from(f">{l1_size}Q", data, l1_offset)):
        if l1 & vmdk.OFFSET_MASK:
            for j, entry in enumerate(struct.unpack_from(">8192Q", data, l1 & vmdk.OFFSET_MASK)):
                if entry & vmdk.L2_COMPRESSED:
                    start = entry & ((1 << 54) - 1)
                    length = (((entry >> 54) & 0xFF) + 1) * 512 - start % 512
                    found.append((start, length, (i * 8192 + j) << 16))
    assert found, "no compressed cluster"
    return max(found) if last else found[0]


def test_a_damaged_qcow2_is_an_error_naming_it_and_leaves_no_ova(qcow2: Path, tmp_path: Path) -> None:
    damaged = shutil.copy(qcow2, tmp_path / "damaged.qcow2")
    start, length = _first_compressed_cluster(damaged)[:2]
    _write(damaged, start, b"\xff" * length)
    (tmp_path / "out").mkdir()
    with pytest.raises(BuildError, match=r"damaged.qcow2: the cluster at guest byte 0 does not inflate"):
        ova.build_ova(damaged, tmp_path / "out" / "d.ova", "d", Settings.from_values({}), runtime=RUNTIME)
    assert os.listdir(tmp_path / "out") == [], "no OVA, no temporary directory"
    # a qcow2 of text alone (every cluster compressed), cut in the middle of its last cluster's stream
    text = tmp_path / "text.raw"
    with open(text, "wb") as fh:
        fh.truncate(64 * MIB)
    _write(text, 3 * MIB, b"".join(b"line %d of a config file\n" % i for i in range(20000)))
    cut = _convert(text, tmp_path / "cut.qcow2", "-c", "-O", "qcow2")
    start, length, guest = _first_compressed_cluster(cut, last=True)
    assert guest > 3 * MIB
    os.truncate(cut, start + length // 4)
    with pytest.raises(
        BuildError, match=rf"cut.qcow2: the cluster at guest byte {guest} inflates to \d+ bytes, not"
    ):
        vmdk.write_from_qcow2(cut, tmp_path / "cut.vmdk", "0")


def test_a_stop_after_the_last_grain_still_leaves_no_ova(qcow2: Path, tmp_path: Path) -> None:
    """`stop` is asked between grains and again before the hashes and the tar, which take seconds for a
    real disk: a boot that fails then still leaves no OVA."""
    from kiln.core.errors import Interrupted

    asked: list[int] = []

    def stop() -> bool:
        asked.append(1)
        return len(asked) > 10  # the qcow2 has 10 grains: true only once they are written

    (tmp_path / "out").mkdir()
    with pytest.raises(Interrupted, match="d.ova: stopped"):
        ova.build_ova(
            qcow2, tmp_path / "out" / "d.ova", "d", Settings.from_values({}), stop=stop, runtime=RUNTIME
        )
    assert len(asked) == 11 and os.listdir(tmp_path / "out") == []
