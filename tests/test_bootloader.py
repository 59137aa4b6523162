"""kiln.build.bootloader: GRUB installed offline. The sector and blocklist arithmetic and grub.cfg here;
the real counterpart is every VM test that boots the suite image (BIOS, UEFI and VMware hardware), whose
base disk got its GRUB this way, and test_vm_build's boot of a fresh base."""

from __future__ import annotations

import re
import shutil
import struct
import subprocess
from pathlib import Path

import pytest

from kiln.build import bootloader
from kiln.core.errors import BuildError

REPO = Path(__file__).resolve().parents[1]
BOOT_IMG = Path("/usr/lib/grub/i386-pc/boot.img")
UUID = "14c1a530-9d6a-5db1-a6d8-e45cb726b10b"


def _sector0() -> bytes:
    """A protective MBR as sfdisk writes one for a GPT: zeros, a disk signature, one 0xEE partition, 55 AA."""
    out = bytearray(512)
    out[0x1B8:0x1BC] = b"\x12\x34\x56\x78"
    out[0x1BE:0x1CE] = bytes([0, 0, 2, 0, 0xEE, 0xFF, 0xFF, 0xFF]) + struct.pack("<II", 1, 0xFFFFFFFF)
    out[510:512] = b"\x55\xaa"
    return bytes(out)


def test_the_mbr_keeps_the_partition_table_and_points_at_core_img():
    boot = bytes(range(256)) * 2
    sector0 = _sector0()
    out = bootloader.mbr(boot, sector0, 2048)
    assert out[0x1B8:] == sector0[0x1B8:]  # disk signature, partition table, 55 AA
    assert out[:3] == boot[:3]  # the jump over the parameter block
    assert out[3:0x5A] == sector0[3:0x5A]  # a parameter block the disk has stays
    assert struct.unpack_from("<Q", out, 0x5C)[0] == 2048
    assert out[0x66:0x68] == b"\x90\x90"
    assert out[0x68:0x1B8] == boot[0x68:0x1B8]
    with pytest.raises(BuildError, match="512 bytes"):
        bootloader.mbr(boot[:511], sector0, 2048)


@pytest.mark.skipif(not BOOT_IMG.is_file(), reason="grub-pc-bin (make deps) is missing")
def test_the_mbr_from_debians_boot_img_is_what_grub_bios_setup_writes():
    """Debian 12's boot.img on a protective MBR: the bytes grub-install wrote on the base disk it booted
    (measured: the two sectors compared equal), here the fields grub-bios-setup sets."""
    boot = BOOT_IMG.read_bytes()
    out = bootloader.mbr(boot, _sector0(), 2048)
    assert out[0x64] == 0xFF  # boot drive: the one the BIOS passes
    assert struct.unpack_from("<Q", out, 0x5C)[0] == 2048
    assert out[510:512] == b"\x55\xaa" and out[0x1BE + 4] == 0xEE


def test_core_img_gets_a_blocklist_of_its_own_sectors():
    core = bytearray(26945)  # 53 sectors, as Debian 12's core.img for ext4 on GPT
    struct.pack_into("<QHH", core, 500, 2, 52, 0x820)  # what grub-mkimage leaves: LBA 2, for the MBR gap
    out = bootloader.embedded_core(bytes(core), 2048, 2048)
    assert len(out) == 53 * 512
    assert struct.unpack_from("<QHH", out, 500) == (2049, 52, 0x820)
    assert out[512:26945] == core[512:]
    with pytest.raises(BuildError, match="53 sectors; the BIOS boot partition holds 40"):
        bootloader.embedded_core(bytes(core), 2048, 40)
    with pytest.raises(BuildError, match="shorter than one sector"):
        bootloader.embedded_core(b"x" * 100, 2048, 2048)


def test_grubenv_is_an_empty_1024_byte_block():
    env = bootloader.grubenv()
    assert len(env) == 1024 and env.startswith(b"# GRUB Environment Block\n") and env.endswith(b"#")


def _tree(tmp_path: Path, extra: str = "") -> Path:
    tree = tmp_path / "tree"
    (tree / "etc" / "default" / "grub.d").mkdir(parents=True)
    shutil.copy2(REPO / "bootstrap" / "grub.cfg", tree / "etc" / "default" / "grub")
    (tree / "etc" / "os-release").write_text(
        'PRETTY_NAME="Debian GNU/Linux 12 (bookworm)"\nNAME="Debian GNU/Linux"\n'
    )
    if extra:
        (tree / "etc" / "default" / "grub.d" / "90-extra.cfg").write_text(extra)
    (tree / "etc" / "default" / "grub.d" / "init-select.cfg").write_text("# nothing\n")
    return tree


def test_grub_cfg_follows_etc_default_grub(tmp_path):
    """bootstrap/grub.cfg (the defaults kiln ships) and a grub.d file that appends to the command line,
    as the node role's extra_kernel_boot_params file does."""
    tree = _tree(tmp_path, '# kiln\nGRUB_CMDLINE_LINUX="$GRUB_CMDLINE_LINUX mitigations=auto"\n')
    defaults = bootloader.read_defaults(tree)
    assert defaults["GRUB_CMDLINE_LINUX"] == "console=tty0 console=ttyS0,115200n8 mitigations=auto"
    assert "GRUB_DISTRIBUTOR" not in defaults  # command substitution: left to update-grub
    cfg = bootloader.grub_cfg(bootloader.os_name(tree), "6.1.0-50-amd64", UUID, defaults)
    linux = [line.strip() for line in cfg.splitlines() if line.strip().startswith("linux")]
    assert linux == [
        f"linux\t/boot/vmlinuz-6.1.0-50-amd64 root=UUID={UUID} ro console=tty0 console=ttyS0,115200n8 "
        "mitigations=auto",
        f"linux\t/boot/vmlinuz-6.1.0-50-amd64 root=UUID={UUID} ro single console=tty0 console=ttyS0,115200n8 "
        "mitigations=auto",
    ]
    assert "menuentry 'Debian GNU/Linux' " in cfg
    assert "initrd\t/boot/initrd.img-6.1.0-50-amd64" in cfg
    assert f"search --no-floppy --fs-uuid --set=root {UUID}" in cfg
    assert "set timeout=1\n" in cfg and "set default=0\n" in cfg
    assert "serial --speed=115200 --unit=0 --word=8 --parity=no --stop=1\n" in cfg
    assert "terminal_input console serial\nterminal_output console serial\n" in cfg
    # the node role's chroot task appends extra_kernel_boot_params to exactly these lines
    role = (REPO / "ansible" / "roles" / "node" / "tasks" / "main.yml").read_text()
    assert r"regexp: '^(\s*linux\s+/\S+\s.*?)" in role
    assert len(re.findall(r"^(\s*linux\s+/\S+\s.*?)$", cfg, re.M)) == 2


@pytest.mark.skipif(shutil.which("grub-script-check") is None, reason="grub-common (make deps) is missing")
def test_grub_cfg_is_valid_grub_script(tmp_path):
    tree = _tree(tmp_path)
    cfg = tmp_path / "grub.cfg"
    cfg.write_text(
        bootloader.grub_cfg("Debian GNU/Linux", "6.1.0-50-amd64", UUID, bootloader.read_defaults(tree))
    )
    subprocess.run(["grub-script-check", str(cfg)], check=True)


def test_a_default_kiln_cannot_write_into_grub_cfg_is_an_error(tmp_path):
    tree = _tree(tmp_path, "GRUB_TIMEOUT='1; reboot'\n")
    with pytest.raises(BuildError, match="not a GRUB menu entry or timeout"):
        bootloader.grub_cfg("Debian", "6.1", UUID, bootloader.read_defaults(tree))
    broken = _tree(tmp_path / "b", 'GRUB_CMDLINE_LINUX="unterminated\n')
    with pytest.raises(BuildError, match=r"90-extra.cfg: GRUB_CMDLINE_LINUX: cannot read"):
        bootloader.read_defaults(broken)


def test_a_tree_without_grub_is_an_error_before_anything_runs(tmp_path):
    from kiln_runtime import RUNTIME

    tree = _tree(tmp_path)
    with pytest.raises(BuildError, match="no GRUB for i386-pc, x86_64-efi in the tree"):
        bootloader.prepare_tree(tree, 3, UUID, "6.1", log_file=None, runtime=RUNTIME)
