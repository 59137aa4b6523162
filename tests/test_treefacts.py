"""The facts a chroot stage gives in place of the build host's (kiln.build.treefacts): the image's own file
systems in ansible_mounts, read off the tree's fstab as a build VM booted from the base disk lists them."""

from __future__ import annotations

from pathlib import Path

from kiln.build import bootstrap, treefacts

FSTAB = """# kiln bootstrap: filesystems by UUID
UUID=47e76e98-e0f9-5509-9e59-760a097f88b4 / ext4 errors=remount-ro,discard 0 1
UUID=8C7C-7678 /boot/efi vfat umask=0077 0 1
/swapfile none swap sw 0 0
proc /proc proc rw,nosuid,nodev,noexec,hidepid=2 0 0
tmpfs /dev/shm tmpfs rw,nosuid,nodev,noexec 0 0
LABEL=data /srv/data xfs defaults,nofail  # a comment after the fields
PARTUUID=0d1c-02 /var/log ext4 defaults 0 2
/dev/vdb1 /mnt/scratch ext4 noauto 0 0
#UUID=old /old ext4 defaults 0 2
"""


def test_mounts_are_the_images_file_systems_from_its_fstab(tmp_path: Path) -> None:
    tree = tmp_path / "tree"
    (tree / "etc").mkdir(parents=True)
    (tree / "etc" / "fstab").write_text(FSTAB)
    (tree / "usr").mkdir()
    (tree / "usr" / "big").write_bytes(b"x" * (3 << 20))
    (tree / "usr" / "big-again").hardlink_to(tree / "usr" / "big")  # counted once, as df counts it
    disk = 4 << 30
    mounts = treefacts.mounts(tree, disk)
    assert [(m["mount"], m["device"], m["fstype"], m["uuid"]) for m in mounts] == [
        ("/", "/dev/disk/by-uuid/47e76e98-e0f9-5509-9e59-760a097f88b4", "ext4",
         "47e76e98-e0f9-5509-9e59-760a097f88b4"),
        ("/boot/efi", "/dev/disk/by-uuid/8C7C-7678", "vfat", "8C7C-7678"),
        ("/srv/data", "/dev/disk/by-label/data", "xfs", "N/A"),
        ("/var/log", "/dev/disk/by-partuuid/0d1c-02", "ext4", "N/A"),
    ]  # fmt: skip
    root, esp = mounts[0], mounts[1]
    assert (root["options"], root["dump"], root["passno"]) == ("errors=remount-ro,discard", 0, 1)
    assert (esp["options"], esp["passno"], mounts[2]["passno"]) == ("umask=0077", 1, 0)
    before = (bootstrap.FIRST_MIB + bootstrap.BIOS_BOOT_MIB + bootstrap.ESP_MIB) << 20
    assert root["size_total"] == disk - before and root["block_size"] == 4096
    assert 3 << 20 <= root["size_total"] - root["size_available"] < 4 << 20  # what the tree holds
    assert root["block_used"] + root["block_available"] == root["block_total"]
    assert root["inode_used"] == 4 and root["inode_total"] == root["size_total"] // 16384
    assert "size_total" not in esp  # sizes for / only
    assert "size_total" not in treefacts.mounts(tree, None)[0]


def test_a_tree_without_fstab_has_no_mounts_and_the_facts_carry_them(tmp_path: Path) -> None:
    assert treefacts.mounts(tmp_path, 1 << 30) == []
    facts = treefacts.facts(tmp_path, None)
    assert facts["mounts"] == [] and facts["swaptotal_mb"] == 0 and "kernel" not in facts
