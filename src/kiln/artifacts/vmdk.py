"""The OVA's disk: a stream-optimized VMDK written from a qcow2's clusters, its deflate streams reused.

A compressed qcow2 (qemu-img's `-c`) holds a raw deflate stream per 64 KB cluster, and the OVA's
stream-optimized VMDK a zlib stream per 64 KB grain: the same deflate data in two wrappings (a zlib stream
is a two-byte header, the raw deflate data and the Adler-32 of what it inflates to). So kiln writes the
VMDK from the build's finished qcow2 instead of deflating the disk a second time: each compressed
cluster is inflated once (to find where its stream ends and to sum it), wrapped and written as a grain;
only a cluster the qcow2 stores uncompressed (it would not compress) is deflated here. On the suite's image
that is 4.3 s on one core instead of the 39 CPU-seconds that `qemu-img convert -O vmdk` takes.

The layout is the one qemu-img writes for `subformat=streamOptimized` (VMware's "Virtual Disk Format 1.1",
sparse extent version 3 with compressed grains and markers), so that whatever imports qemu-img's OVA disks
imports these: the header and the descriptor in the first 21 sectors; the redundant grain directory and its
grain tables; the grain directory and its grain tables; then, from the first 64 KB boundary after them, the
grains in disk order, each a marker (its first sector and its length) and its zlib stream, padded to a
sector. Only the grain tables' entries differ from qemu-img's output for the same disk, as the streams'
lengths do (`tests/test_vmdk.py` compares the two), and the end: kiln closes the stream with an
end-of-stream marker (a zero sector), which VMware's format has and qemu-img does not write.

A qcow2 kiln cannot read this way (a backing file, encryption, clusters other than 64 KB, an external data
file, extended L2 entries, another compression type, a size that is not whole grains) is named by
`unreadable_reason`, and the caller converts it with qemu-img instead.
"""

from __future__ import annotations

import hashlib
import struct
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from kiln.core.errors import BuildError, Interrupted

SECTOR = 512
GRAIN_SECTORS = 128  # 64 KB grains, as qemu-img writes them
GRAIN = GRAIN_SECTORS * SECTOR
GTES_PER_GT = 512
DESCRIPTOR_OFFSET = 1  # sectors
DESCRIPTOR_SECTORS = 20
FLAGS = 0x1 | 0x2 | 0x10000 | 0x20000  # newline test, redundant grain table, compressed grains, markers
VERSION = 3  # stream-optimized
DEFLATE = 1  # compressAlgorithm
ZLIB_HEADER = b"\x78\x9c"  # deflate, 32 KB window (covers any qcow2 stream's), default level
HEADER = struct.Struct("<4sIIQQQQIQQQBccccH")
GRAIN_MARKER = struct.Struct("<QI")  # the grain's first sector, its stream's length

QCOW2_MAGIC = b"QFI\xfb"
QCOW2_CLUSTER_BITS = 16
OFFSET_MASK = 0x00FFFFFFFFFFFE00
L2_COMPRESSED = 1 << 62
L2_ZERO = 1  # version 3: the cluster reads as zeros
COMPRESSION_LEVEL = 6  # zlib's default, as qemu-img's VMDK grains
INCOMPATIBLE = {
    0x2: "marked corrupt",
    0x4: "an external data file",
    0x8: "a compression type other than zlib",
    0x10: "extended L2 entries",
}


@dataclass(frozen=True)
class Written:
    """What write_from_qcow2 did: the grains written, how many of them it deflated, the file's size."""

    grains: int
    deflated: int
    size: int


def content_id(seed: str) -> str:
    """The descriptor's CID, 8 hex digits from `seed` (qemu-img draws it at random): the same disk, the
    same bytes."""
    return hashlib.sha256(f"kiln:vmdk-cid:{seed}".encode()).hexdigest()[:8]


def descriptor(capacity: int, extent_name: str, cid: str) -> bytes:
    """The embedded descriptor as qemu-img writes it for a stream-optimized disk of `capacity` sectors
    (IDE geometry: 16 heads, 63 sectors, and as many cylinders as that makes: qemu-img does not cap them
    at 16383 as VMware's own tools do)."""
    cylinders = capacity // (16 * 63)
    return (
        "# Disk DescriptorFile\n"
        "version=1\n"
        f"CID={cid}\n"
        "parentCID=ffffffff\n"
        'createType="streamOptimized"\n'
        "\n"
        "# Extent description\n"
        f'RW {capacity} SPARSE "{extent_name}"\n'
        "\n"
        "# The Disk Data Base\n"
        "#DDB\n"
        "\n"
        'ddb.virtualHWVersion = "4"\n'
        f'ddb.geometry.cylinders = "{cylinders}"\n'
        'ddb.geometry.heads = "16"\n'
        'ddb.geometry.sectors = "63"\n'
        'ddb.adapterType = "ide"\n'
        'ddb.toolsVersion = "2147483647"\n'
    ).encode()


@dataclass(frozen=True)
class Layout:
    """Where the metadata goes, in sectors, for a disk of `capacity` sectors."""

    capacity: int

    @property
    def grains(self) -> int:
        return -(-self.capacity // GRAIN_SECTORS)

    @property
    def gt_count(self) -> int:
        return -(-self.grains // GTES_PER_GT)

    @property
    def gt_sectors(self) -> int:
        return GTES_PER_GT * 4 // SECTOR

    @property
    def gd_sectors(self) -> int:
        return -(-self.gt_count * 4 // SECTOR)

    @property
    def rgd_offset(self) -> int:
        return DESCRIPTOR_OFFSET + DESCRIPTOR_SECTORS

    @property
    def gd_offset(self) -> int:
        return self.rgd_offset + self.gd_sectors + self.gt_count * self.gt_sectors

    @property
    def grain_offset(self) -> int:
        end = self.gd_offset + self.gd_sectors + self.gt_count * self.gt_sectors
        return -(-end // GRAIN_SECTORS) * GRAIN_SECTORS

    def header(self) -> bytes:
        fields = HEADER.pack(
            b"KDMV", VERSION, FLAGS, self.capacity, GRAIN_SECTORS, DESCRIPTOR_OFFSET, DESCRIPTOR_SECTORS,
            GTES_PER_GT, self.rgd_offset, self.gd_offset, self.grain_offset, 0, b"\n", b" ", b"\r", b"\n",
            DEFLATE,
        )  # fmt: skip
        return fields.ljust(SECTOR, b"\0")

    def directory(self, gd_offset: int, tables: list[int]) -> bytes:
        """A grain directory at `gd_offset` and its grain tables right after it (`tables`: each grain's
        sector, 0 for a grain never written)."""
        first_gt = gd_offset + self.gd_sectors
        gd = struct.pack(
            f"<{self.gt_count}I", *(first_gt + i * self.gt_sectors for i in range(self.gt_count))
        )
        padded = tables + [0] * (self.gt_count * GTES_PER_GT - len(tables))
        return gd.ljust(self.gd_sectors * SECTOR, b"\0") + struct.pack(f"<{len(padded)}I", *padded)


@dataclass(frozen=True)
class _Qcow2:
    size: int
    l1: tuple[int, ...]
    zero_flag: bool


def _read_qcow2(path: Path) -> tuple[_Qcow2 | None, str]:
    """The qcow2's header and L1 table, or (None, why kiln cannot read it as clusters)."""
    try:
        with open(path, "rb") as fh:
            head = fh.read(104)
            if head[:4] != QCOW2_MAGIC or len(head) < 72:
                return None, "not a qcow2"
            version, backing, _, cluster_bits, size, crypt, l1_size, l1_offset = struct.unpack_from(
                ">IQIIQIIQ", head, 4
            )
            incompatible = struct.unpack_from(">Q", head, 72)[0] if version >= 3 and len(head) >= 80 else 0
            if version not in (2, 3):
                return None, f"qcow2 version {version}"
            if backing:
                return None, "a backing file"
            if crypt:
                return None, "encrypted"
            if cluster_bits != QCOW2_CLUSTER_BITS:
                return None, f"{1 << cluster_bits}-byte clusters, not 64 KB grains"
            if incompatible & ~1:  # the dirty bit alone is harmless
                named = [what for bit, what in INCOMPATIBLE.items() if incompatible & bit] or ["unknown"]
                return None, f"incompatible features 0x{incompatible:x} ({', '.join(named)})"
            if size % GRAIN:
                return None, f"a virtual size ({size}) that is not whole 64 KB grains"
            fh.seek(l1_offset)
            raw = fh.read(8 * l1_size)
            if len(raw) != 8 * l1_size:
                return None, "a truncated L1 table"
    except OSError as exc:
        return None, f"unreadable: {exc.strerror or exc}"
    return _Qcow2(size, struct.unpack(f">{l1_size}Q", raw), version >= 3), ""


def unreadable_reason(path: Path) -> str:
    """Why write_from_qcow2 cannot write `path`'s VMDK ("" when it can)."""
    return _read_qcow2(path)[1]


def _grains(path: Path, image: _Qcow2) -> Iterator[tuple[int, bytes, bool]]:
    """(grain index, its zlib stream, whether kiln deflated it) for every cluster that holds data, in disk
    order."""
    per_l2 = (1 << QCOW2_CLUSTER_BITS) // 8
    csize_shift = 62 - (QCOW2_CLUSTER_BITS - 8)
    csize_mask = (1 << (QCOW2_CLUSTER_BITS - 8)) - 1
    offset_mask = (1 << csize_shift) - 1
    clusters = image.size // GRAIN
    with open(path, "rb") as fh:

        def read(offset: int, length: int, what: str, whole: bool = True) -> bytes:
            fh.seek(offset)
            data = fh.read(length)
            if whole and len(data) != length:
                raise BuildError(f"{path}: {what} at byte {offset} runs past the end of the file")
            return data

        for l1_index, l1_entry in enumerate(image.l1):
            l2_offset = l1_entry & OFFSET_MASK
            if not l2_offset:
                continue
            table = struct.unpack(f">{per_l2}Q", read(l2_offset, 1 << QCOW2_CLUSTER_BITS, "an L2 table"))
            for l2_index, entry in enumerate(table):
                index = l1_index * per_l2 + l2_index
                if index >= clusters or entry & ~(1 << 63) == 0:
                    continue
                where = f"the cluster at guest byte {index * GRAIN}"
                if entry & L2_COMPRESSED:
                    start = entry & offset_mask
                    length = (((entry >> csize_shift) & csize_mask) + 1) * SECTOR - (start % SECTOR)
                    # its last sector may be cut short at the end of the file (qemu reads zeros there); the
                    # stream's own end is what counts
                    stream = read(start, length, where, whole=False)
                    inflater = zlib.decompressobj(-15)
                    try:
                        data = inflater.decompress(stream, GRAIN)
                    except zlib.error as exc:
                        raise BuildError(f"{path}: {where} does not inflate: {exc}") from exc
                    if not inflater.eof or len(data) != GRAIN:
                        raise BuildError(
                            f"{path}: {where} inflates to {len(data)} bytes, not a whole cluster"
                        )
                    deflate = stream[: len(stream) - len(inflater.unused_data)]
                    yield index, ZLIB_HEADER + deflate + struct.pack(">I", zlib.adler32(data)), False
                elif image.zero_flag and entry & L2_ZERO:
                    continue
                else:
                    data = read(entry & OFFSET_MASK, GRAIN, where)
                    if data.count(0) == GRAIN:
                        continue
                    yield index, zlib.compress(data, COMPRESSION_LEVEL), True


def write_from_qcow2(qcow2: Path, out: Path, cid: str, stop: Callable[[], bool] | None = None) -> Written:
    """Write `out`, a stream-optimized VMDK of `qcow2`'s disk (its descriptor names `out`'s file name,
    its content ID is `cid`). Raises BuildError when `unreadable_reason` would name one, or when a cluster
    is damaged, and Interrupted as soon as `stop()` is true; the caller writes `out` in a temporary
    place."""
    image, reason = _read_qcow2(qcow2)
    if image is None:
        raise BuildError(f"{qcow2}: kiln cannot write a VMDK from it: {reason}")
    layout = Layout(image.size // SECTOR)
    text = descriptor(layout.capacity, out.name, cid)
    if len(text) > DESCRIPTOR_SECTORS * SECTOR:
        raise BuildError(f"{out}: the VMDK descriptor is {len(text)} bytes, more than its area")
    tables = [0] * layout.grains
    grains = deflated = 0
    with open(out, "wb") as fh:
        fh.write(layout.header() + text.ljust(DESCRIPTOR_SECTORS * SECTOR, b"\0"))
        fh.seek(layout.grain_offset * SECTOR)
        sector = layout.grain_offset
        for index, stream, ours in _grains(qcow2, image):
            if stop is not None and stop():
                raise Interrupted(f"{out}: stopped")
            record = GRAIN_MARKER.pack(index * GRAIN_SECTORS, len(stream)) + stream
            padded = -(-len(record) // SECTOR) * SECTOR
            fh.write(record.ljust(padded, b"\0"))
            tables[index] = sector
            sector += padded // SECTOR
            grains += 1
            deflated += ours
        fh.write(b"\0" * SECTOR)  # the end-of-stream marker
        for gd_offset in (layout.rgd_offset, layout.gd_offset):
            fh.seek(gd_offset * SECTOR)
            fh.write(layout.directory(gd_offset, tables))
        size = fh.seek(0, 2)
    return Written(grains, deflated, size)
