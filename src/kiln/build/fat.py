"""Every time in a FAT32 filesystem set to one date, in place, so that the same files make the same bytes.

The base disk's ESP is written by mtools (kiln.build.bootloader), on this machine's clock: two cold builds
of the same inputs would make two ESPs that differ only in the directory entries' creation, access and
write times. No tool here sets a FAT entry's times after the fact (mtools' `mcopy -m` copies a file's
mtime, not a directory's, and stamps the creation time with the clock), so this walks the directory tree
from the root cluster and rewrites the time fields of every short entry: files, directories, "." and "..",
the volume label, and deleted entries, whose bytes stay on the disk too. Long-name entries hold no times.
"""

from __future__ import annotations

import struct
import time
from pathlib import Path

from kiln.core.errors import BuildError

ENTRY = 32
ATTR_LFN = 0x0F
ATTR_DIR = 0x10
END_OF_CHAIN = 0x0FFFFFF8


FIRST, LAST = 315532800, 4354819199  # 1980-01-01 and 2107-12-31 23:59:59 UTC: the dates FAT can hold


def fat_datetime(epoch: int) -> tuple[int, int]:
    """(date, time) words of a FAT entry for `epoch` in UTC; FAT counts from 1980 in 2-second steps."""
    t = time.gmtime(min(max(epoch, FIRST), LAST))
    date = ((t.tm_year - 1980) << 9) | (t.tm_mon << 5) | t.tm_mday
    clock = (t.tm_hour << 11) | (t.tm_min << 5) | (t.tm_sec // 2)
    return date, clock


def set_fat_times(image: Path, offset: int, epoch: int) -> int:
    """Set every short entry's times in the FAT32 filesystem at byte `offset` of `image` to `epoch`.
    Returns the number of entries rewritten."""
    date, clock = fat_datetime(epoch)
    with open(image, "r+b") as f:
        f.seek(offset)
        boot = f.read(512)
        if len(boot) < 512 or boot[510:512] != b"\x55\xaa":
            raise BuildError(f"{image}: no FAT boot sector at byte {offset}")
        bytes_per_sector, per_cluster, reserved, fats = struct.unpack_from("<HBHB", boot, 11)
        sectors_per_fat, root_cluster = struct.unpack_from("<I4xI", boot, 36)
        total_sectors = struct.unpack_from("<H", boot, 19)[0] or struct.unpack_from("<I", boot, 32)[0]
        if struct.unpack_from("<H", boot, 22)[0] != 0 or sectors_per_fat == 0 or not per_cluster:
            raise BuildError(f"{image}: the filesystem at byte {offset} is not FAT32")
        cluster_bytes = bytes_per_sector * per_cluster
        f.seek(offset + reserved * bytes_per_sector)
        fat = f.read(sectors_per_fat * bytes_per_sector)
        data = offset + (reserved + fats * sectors_per_fat) * bytes_per_sector
        # the clusters the data region holds (the FAT's tail past them maps beyond the filesystem's end)
        first_data = reserved + fats * sectors_per_fat
        if total_sectors <= first_data:
            raise BuildError(f"{image}: the filesystem at byte {offset} is not FAT32 (no data region)")
        last_cluster = min(len(fat) // 4, (total_sectors - first_data) // per_cluster + 2)

        def chain(first: int) -> list[int]:
            out: list[int] = []
            cluster = first
            while 2 <= cluster < END_OF_CHAIN:
                if cluster >= last_cluster:
                    raise BuildError(
                        f"{image}: cluster {cluster} past the FAT32 data region ({last_cluster})"
                    )
                if len(out) > last_cluster:
                    raise BuildError(f"{image}: a loop in the FAT's cluster chain from {first}")
                out.append(cluster)
                cluster = struct.unpack_from("<I", fat, cluster * 4)[0] & 0x0FFFFFFF
            return out

        rewritten = 0
        seen: set[int] = set()
        pending = [root_cluster]
        while pending:
            first = pending.pop()
            if first in seen:
                continue
            seen.add(first)
            ended = False
            for cluster in chain(first):
                if ended:  # the directory's end marker came: what follows in its clusters is no entry
                    break
                where = data + (cluster - 2) * cluster_bytes
                f.seek(where)
                block = bytearray(f.read(cluster_bytes))
                changed = False
                for at in range(0, len(block), ENTRY):
                    if block[at] == 0:  # no entry after this one in the directory
                        ended = True
                        break
                    attr = block[at + 11]
                    if attr == ATTR_LFN:
                        continue
                    struct.pack_into("<BHHH", block, at + 13, 0, clock, date, date)  # creation, access
                    struct.pack_into("<HH", block, at + 22, clock, date)  # write
                    changed = True
                    rewritten += 1
                    dot = block[at] == ord(".")  # "." and "..": this directory and its parent
                    if attr & ATTR_DIR and block[at] != 0xE5 and not dot:
                        (high,) = struct.unpack_from("<H", block, at + 20)
                        (low,) = struct.unpack_from("<H", block, at + 26)
                        pending.append((high << 16) | low)
                if changed:
                    f.seek(where)
                    f.write(block)
    return rewritten
