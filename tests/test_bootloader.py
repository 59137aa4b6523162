"""kiln.build.bootloader: GRUB installed offline. The sector and blocklist arithmetic and grub.cfg here;
the real counterpart is every VM test that boots the suite image (BIOS, UEFI and VMware hardware), whose
base disk got its GRUB this way, and test_vm_build's boot of a fresh base."""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import struct
import subprocess
from pathlib import Path

import pytest

from kiln.build import bootloader, standins
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
    with pytest.raises(BuildError, match="boot.img is 511 bytes, not 512"):
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
    moved = bytearray(core)
    struct.pack_into("<QHH", moved, 500, 7, 52, 0x820)
    with pytest.raises(BuildError, match=r"blocklist is \(7, 52\), not grub-mkimage's \(2, 52\)"):
        bootloader.embedded_core(bytes(moved), 2048, 2048)
    with pytest.raises(BuildError, match="53 sectors; the BIOS boot partition holds 40"):
        bootloader.embedded_core(bytes(core), 2048, 40)
    with pytest.raises(BuildError, match="shorter than one sector"):
        bootloader.embedded_core(b"x" * 100, 2048, 2048)


def test_grubenv_is_an_empty_1024_byte_block():
    env = bootloader.grubenv()
    assert len(env) == 1024 and env.startswith(b"# GRUB Environment Block\n") and env.endswith(b"#")


def _tree(tmp_path: Path, extra: str = "") -> Path:
    """A tree that a chroot can run sh in (the host's sh and the libraries it loads), with kiln's GRUB
    defaults (bootstrap/grub.cfg) as /etc/default/grub and `extra` as a grub.d file."""
    tree = tmp_path / "tree"
    (tree / "etc" / "default" / "grub.d").mkdir(parents=True)
    (tree / "tmp").mkdir()
    shutil.copy2(REPO / "bootstrap" / "grub.cfg", tree / "etc" / "default" / "grub")
    if extra:
        (tree / "etc" / "default" / "grub.d" / "90-extra.cfg").write_text(extra)
    sh = Path(os.path.realpath("/bin/sh"))
    libs = re.findall(r"(/\S+) \(0x", subprocess.run(["ldd", str(sh)], capture_output=True, text=True).stdout)
    for path in [str(sh), *libs]:
        dest = tree / path.lstrip("/")
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(path, dest)
    (tree / "bin").mkdir(exist_ok=True)
    if not (tree / "bin" / "sh").exists():
        os.symlink(str(sh), tree / "bin" / "sh")
    return tree


needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="chroot needs root")


def _defaults(tree: Path) -> dict[str, str]:
    from kiln_runtime import RUNTIME

    return bootloader.read_defaults(tree, log_file=None, runtime=RUNTIME)


@needs_root
def test_the_defaults_are_read_as_sh_reads_them(tmp_path):
    """/etc/default/grub and grub.d sourced by sh in the tree, as grub-mkconfig sources them: comments,
    `$VAR` (no prefix confusion), unset variables, conditionals and command substitution."""
    tree = _tree(
        tmp_path,
        "# kiln\n"
        'GRUB_CMDLINE_LINUX="$GRUB_CMDLINE_LINUX mitigations=auto" # a comment sh drops\n'
        'GRUB_CMDLINE_LINUX_DEFAULT="quiet $GRUB_CMDLINE_LINUX_DEFAULT$UNSET_VARIABLE"\n'
        "if false; then GRUB_TIMEOUT=30; fi\n"
        "GRUB_DISABLE_RECOVERY=$(echo true)\n",
    )
    d = _defaults(tree)
    assert d["GRUB_CMDLINE_LINUX"] == "console=tty0 console=ttyS0,115200n8 mitigations=auto"
    assert d["GRUB_CMDLINE_LINUX_DEFAULT"] == "quiet"
    assert d["GRUB_TIMEOUT"] == "1" and d["GRUB_DISABLE_RECOVERY"] == "true"
    assert d["GRUB_DISTRIBUTOR"] == "Debian"  # `lsb_release ... || echo Debian`: no lsb_release in the tree
    assert d["GRUB_TERMINAL"] == "console serial" and d["GRUB_TERMINAL_INPUT"] == ""
    assert not (tree / "tmp" / ".kiln-grub-defaults").exists()
    (tree / "etc" / "default" / "grub.d" / "90-extra.cfg").write_text('GRUB_CMDLINE_LINUX="unterminated\n')
    with pytest.raises(BuildError, match=r"sourcing /etc/default/grub and /etc/default/grub.d/\*.cfg failed"):
        _defaults(tree)


DEFAULTS = {
    "GRUB_DEFAULT": "0", "GRUB_TIMEOUT": "1", "GRUB_DISTRIBUTOR": "Debian",
    "GRUB_CMDLINE_LINUX": "console=tty0 console=ttyS0,115200n8 mitigations=auto",
    "GRUB_CMDLINE_LINUX_DEFAULT": "",
    "GRUB_TERMINAL": "console serial", "GRUB_TERMINAL_INPUT": "", "GRUB_TERMINAL_OUTPUT": "",
    "GRUB_SERIAL_COMMAND": "serial --speed=115200 --unit=0 --word=8 --parity=no --stop=1",
    "GRUB_DISABLE_RECOVERY": "",
}  # fmt: skip


def test_grub_cfg_follows_etc_default_grub():
    cfg = bootloader.grub_cfg("6.1.0-50-amd64", UUID, DEFAULTS)
    linux = [line.strip() for line in cfg.splitlines() if line.strip().startswith("linux")]
    assert linux == [
        f"linux\t/boot/vmlinuz-6.1.0-50-amd64 root=UUID={UUID} ro console=tty0 console=ttyS0,115200n8 "
        "mitigations=auto",
        f"linux\t/boot/vmlinuz-6.1.0-50-amd64 root=UUID={UUID} ro single console=tty0 console=ttyS0,115200n8 "
        "mitigations=auto",
    ]
    assert (
        "menuentry 'Debian GNU/Linux' --class debian --class gnu-linux --class gnu --class os "
        f"--id 'gnulinux-simple-{UUID}' {{" in cfg
    )
    assert "initrd\t/boot/initrd.img-6.1.0-50-amd64" in cfg
    assert f"search --no-floppy --fs-uuid --set=root {UUID}" in cfg
    assert "set timeout=1\n" in cfg and '   set default="0"\n' in cfg and "save_env next_entry" in cfg
    assert "serial --speed=115200 --unit=0 --word=8 --parity=no --stop=1\n" in cfg
    assert "terminal_input console serial\nterminal_output console serial\n" in cfg


@pytest.mark.parametrize(
    "default, entry",
    [("0", 0), ("", 0), (f"gnulinux-simple-{UUID}", 0), ("1", 1),
     (f"gnulinux-6.1.0-50-amd64-recovery-{UUID}", 1),
     ("7", 0)],  # GRUB boots the first entry when the default names none
)  # fmt: skip
def test_the_kernel_command_line_is_grub_cfgs_default_entrys(default, entry):
    """What a chroot stage shows as /proc/cmdline: the linux line of the entry grub.cfg boots (the same
    parameters, words, order), with the BOOT_IMAGE GRUB puts first."""
    defaults = {**DEFAULTS, "GRUB_DEFAULT": default, "GRUB_CMDLINE_LINUX_DEFAULT": "  quiet   apparmor=1 "}
    cfg = bootloader.grub_cfg("6.1.0-50-amd64", UUID, defaults)
    linux = [line.split(None, 1)[1] for line in cfg.splitlines() if line.strip().startswith("linux")]
    line = bootloader.proc_cmdline("6.1.0-50-amd64", UUID, defaults)
    assert line == "BOOT_IMAGE=" + " ".join(linux[entry].split())
    assert line.endswith(
        " quiet apparmor=1"
        if entry == 0
        else " ro single console=tty0 console=ttyS0,115200n8 mitigations=auto"
    )
    alone = bootloader.proc_cmdline(
        "6.1", UUID, {**DEFAULTS, "GRUB_DISABLE_RECOVERY": "true", "GRUB_DEFAULT": "1"}
    )
    assert (
        alone
        == f"BOOT_IMAGE=/boot/vmlinuz-6.1 root=UUID={UUID} ro console=tty0 console=ttyS0,115200n8 "
        + ("mitigations=auto")
    )


def test_grub_cfg_options_update_grub_knows():
    changed = {"GRUB_DISABLE_RECOVERY": "true", "GRUB_DISTRIBUTOR": "", "GRUB_TERMINAL_OUTPUT": "console",
               "GRUB_DEFAULT": f"gnulinux-simple-{UUID}"}  # fmt: skip
    cfg = bootloader.grub_cfg("6.1", UUID, {**DEFAULTS, **changed})
    assert cfg.count("menuentry ") == 1 and "menuentry 'GNU/Linux' " in cfg
    assert "terminal_input console serial\nterminal_output console\n" in cfg
    assert f'set default="gnulinux-simple-{UUID}"' in cfg
    plain = bootloader.grub_cfg("6.1", UUID, {**DEFAULTS, "GRUB_TERMINAL": ""})
    assert "terminal_" not in plain and "serial --" not in plain


@pytest.mark.skipif(shutil.which("grub-script-check") is None, reason="grub-common (make deps) is missing")
def test_grub_cfg_is_valid_grub_script(tmp_path):
    cfg = tmp_path / "grub.cfg"
    cfg.write_text(bootloader.grub_cfg("6.1.0-50-amd64", UUID, DEFAULTS))
    subprocess.run(["grub-script-check", str(cfg)], check=True)


@pytest.mark.parametrize(
    "key, value, message",
    [
        ("GRUB_DEFAULT", "saved", "GRUB_DEFAULT='saved': kiln writes grub.cfg offline"),
        ("GRUB_TIMEOUT", "1; reboot", "GRUB_TIMEOUT='1; reboot': want a number of seconds"),
        ("GRUB_TERMINAL", "console serial}", "'serial}' is not a terminal name"),
        ("GRUB_SERIAL_COMMAND", "serial; reboot", "GRUB_SERIAL_COMMAND='serial; reboot'"),
    ],
)
def test_a_default_kiln_cannot_write_into_grub_cfg_is_an_error_naming_the_key(key, value, message):
    with pytest.raises(BuildError, match=re.escape(message)):
        bootloader.grub_cfg("6.1", UUID, {**DEFAULTS, key: value})


def test_a_tree_without_grub_is_an_error_before_anything_runs(tmp_path):
    from kiln_runtime import RUNTIME

    tree = tmp_path / "tree"
    tree.mkdir()
    with pytest.raises(BuildError, match="no GRUB for i386-pc, x86_64-efi in the tree"):
        bootloader.prepare_tree(tree, 3, UUID, "6.1", log_file=None, runtime=RUNTIME)


def _divert_tree(tmp_path: Path) -> Path:
    """_tree with the host's dpkg-divert (and its libraries), an empty dpkg database, and an update-grub and
    grub-mkconfig that fail as they do in a chroot."""
    tree = _tree(tmp_path)
    tool = Path("/usr/bin/dpkg-divert")
    linked = subprocess.run(["ldd", str(tool)], capture_output=True, text=True).stdout
    libs = re.findall(r"(/\S+) \(0x", linked)
    for path in [str(tool), *libs]:
        (tree / path.lstrip("/")).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(path, tree / path.lstrip("/"))
    dpkg = tree / "var" / "lib" / "dpkg"
    dpkg.mkdir(parents=True)
    (dpkg / "status").write_text("")
    (dpkg / "diversions").write_text("/bin/sh\n/bin/sh.distrib\ndash\n")
    (dpkg / "diversions-old").write_text("")
    (tree / "usr" / "sbin").mkdir(parents=True, exist_ok=True)
    for name in ("update-grub", "grub-mkconfig"):
        real = tree / "usr" / "sbin" / name
        real.write_text('#!/bin/sh\necho "grub-probe: error: cannot find a device for /." >&2\nexit 1\n')
        real.chmod(0o755)
    return tree


def _run_in(tree: Path, *argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["chroot", str(tree), *argv], capture_output=True, text=True, check=False)


@needs_root
@pytest.mark.skipif(not Path("/usr/bin/dpkg-divert").exists(), reason="a Debian host's dpkg-divert")
def test_a_chroot_stage_leaves_update_grub_to_finalize_and_puts_it_back(tmp_path):
    """While a stage runs, update-grub and grub-mkconfig (a kernel package's postinst hook, a role after it
    changed /etc/default/grub) succeed with a note; afterwards the real ones are back, dpkg's diversions and
    their backup as before, and an upgrade of GRUB during the stage (dpkg writes the diverted name) kept."""
    from kiln_runtime import RUNTIME

    tree = _divert_tree(tmp_path)
    dpkg = tree / "var" / "lib" / "dpkg"
    before = {name: (dpkg / name).read_bytes() for name in ("diversions", "diversions-old")}
    real = (tree / "usr/sbin/update-grub").read_bytes()
    with standins.diverted(tree, log_file=None, runtime=RUNTIME) as diverted:
        assert diverted == ["/usr/sbin/update-grub", "/usr/sbin/grub-mkconfig"]
        for argv in (["update-grub"], ["/usr/sbin/grub-mkconfig", "-o", "/boot/grub/grub.cfg"]):
            done = _run_in(tree, "/bin/sh", "-c", " ".join(argv))
            assert done.returncode == 0 and "kiln writes /boot/grub/grub.cfg at finalize" in done.stderr
        hook = tree / "etc/initramfs-tools/hooks/zz-kiln-stage"  # keeps stand-ins out of an initrd
        assert "/usr/sbin/update-grub /usr/sbin/grub-mkconfig" in hook.read_text()
        upgraded = b"#!/bin/sh\n# grub2-common, upgraded by a role\nexit 1\n"
        (tree / "usr/sbin/grub-mkconfig.kiln-stage").write_bytes(upgraded)
    assert (tree / "usr/sbin/update-grub").read_bytes() == real
    assert (tree / "usr/sbin/grub-mkconfig").read_bytes() == upgraded
    assert {name: (dpkg / name).read_bytes() for name in before} == before
    assert not list((tree / "usr/sbin").glob("*.kiln-stage"))
    assert not (tree / "etc/initramfs-tools").exists()  # the hook and the directories made for it
    assert _run_in(tree, "/usr/sbin/update-grub").returncode == 1  # the real one again


@needs_root
@pytest.mark.skipif(not Path("/usr/bin/dpkg-divert").exists(), reason="a Debian host's dpkg-divert")
def test_update_grub_is_put_back_when_the_stage_fails_and_left_alone_where_a_package_diverts_it(tmp_path):
    from kiln_runtime import RUNTIME

    tree = _divert_tree(tmp_path)
    with pytest.raises(RuntimeError), standins.diverted(tree, log_file=None, runtime=RUNTIME):
        raise RuntimeError("a task failed")
    assert _run_in(tree, "/usr/sbin/update-grub").returncode == 1
    assert not list((tree / "usr/sbin").glob("*.kiln-stage"))
    # a package of the tree diverts grub-mkconfig already: kiln's diversion would clash, so it stays
    site = ["--package", "site-grub", "--divert", "/usr/sbin/grub-mkconfig.site"]
    assert _run_in(tree, "dpkg-divert", "--quiet", *site, "--add", "/usr/sbin/grub-mkconfig").returncode == 0
    with standins.diverted(tree, log_file=None, runtime=RUNTIME) as diverted:
        assert diverted == ["/usr/sbin/update-grub"]
    assert "/usr/sbin/grub-mkconfig.site" in (tree / "var/lib/dpkg/diversions").read_text()
    # no dpkg-divert in the tree (not a Debian tree): nothing to divert
    (tree / "usr/bin/dpkg-divert").unlink()
    with standins.diverted(tree, log_file=None, runtime=RUNTIME) as diverted:
        assert diverted == []


@needs_root
def test_a_stage_that_leaves_grub_defaults_finalize_cannot_write_fails_before_it_is_cached(tmp_path):
    """check_cfg, at the end of each chroot stage: GRUB_DEFAULT=saved (a role's) or no kernel with its initrd
    is an error naming the key or the files, before the tree is packed; a tree without grub.cfg is left be."""
    from kiln_runtime import RUNTIME

    tree = _tree(tmp_path)
    bootloader.check_cfg(tree, log_file=None, runtime=RUNTIME)  # no /boot/grub/grub.cfg: not a base's tree
    (tree / "boot" / "grub").mkdir(parents=True)
    (tree / "boot" / "grub" / "grub.cfg").write_text("")
    with pytest.raises(BuildError, match="no kernel with its initrd"):
        bootloader.check_cfg(tree, log_file=None, runtime=RUNTIME)
    for name in ("vmlinuz-6.1.0-50-amd64", "initrd.img-6.1.0-50-amd64"):
        (tree / "boot" / name).write_bytes(b"")
    bootloader.check_cfg(tree, log_file=None, runtime=RUNTIME)
    (tree / "etc" / "default" / "grub.d" / "50-site.cfg").write_text("GRUB_DEFAULT=saved\n")
    with pytest.raises(BuildError, match="GRUB_DEFAULT='saved'"):
        bootloader.check_cfg(tree, log_file=None, runtime=RUNTIME)


STOCK_40 = "#!/bin/sh\nexec tail -n +3 $0\n# menu entries you want to add go after this comment\n"


@needs_root
def test_a_grub_d_script_kilns_grub_cfg_would_leave_out_fails_the_stage(tmp_path):
    """update-grub runs every executable /etc/grub.d script; kiln writes grub.cfg itself. A script it does
    not stand for (a role's, memtest86+'s), a stock one changed from what dpkg installed (a GRUB password or
    an entry in 40_custom, a hardening role's 10_linux) or a custom.cfg for 41_custom is an error naming
    it, before the tree is cached; stock scripts, backups and files that are not executable are not."""
    from kiln_runtime import RUNTIME

    tree = _tree(tmp_path)
    (tree / "boot" / "grub").mkdir(parents=True)
    (tree / "boot" / "grub" / "grub.cfg").write_text("")
    for name in ("vmlinuz-6.1.0-50-amd64", "initrd.img-6.1.0-50-amd64"):
        (tree / "boot" / name).write_bytes(b"")
    grub_d = tree / "etc" / "grub.d"
    grub_d.mkdir()
    bli = "#!/bin/sh\n# a later GRUB's own script\n"  # not kiln's STOCK_SCRIPTS, but a GRUB package's
    for name, text in (("10_linux", "#!/bin/sh\n# entries\n"), ("40_custom", STOCK_40), ("README", "x\n"),
                       ("25_bli", bli)):  # fmt: skip
        (grub_d / name).write_text(text)
        (grub_d / name).chmod(0o755)
    sums = "".join(
        f" /etc/grub.d/{n} {hashlib.md5((grub_d / n).read_bytes()).hexdigest()}\n"
        for n in ("10_linux", "40_custom", "25_bli")
    )
    (tree / "var" / "lib" / "dpkg").mkdir(parents=True)
    (tree / "var" / "lib" / "dpkg" / "status").write_text(
        "Package: grub-common\nStatus: install ok installed\nConffiles:\n" + sums + "Description: GRUB\n\n"
    )
    bootloader.check_cfg(
        tree, log_file=None, runtime=RUNTIME
    )  # stock, unchanged: kiln's grub.cfg stands for it
    (grub_d / "40_custom~").write_text(STOCK_40 + "menuentry 'old' {\n}\n")  # an editor's backup: not run
    (grub_d / "40_custom~").chmod(0o755)
    (grub_d / ".40_custom.swp").write_text("x")  # a dotfile: grub-mkconfig's glob skips it
    (grub_d / ".40_custom.swp").chmod(0o755)
    (tree / "usr" / "lib" / "site").mkdir(parents=True)
    (tree / "usr" / "lib" / "site" / "grub").write_text("#!/bin/sh\n")  # not executable in the tree
    os.symlink("/usr/lib/site/grub", grub_d / "50_site")  # absolute: the tree's file, not the build host's
    (grub_d / "45_notes").write_text("#!/bin/sh\necho x\n")  # not executable: not run
    (grub_d / "40_custom.dpkg-dist").write_text(STOCK_40)
    (grub_d / "40_custom.dpkg-dist").chmod(0o755)
    assert bootloader.unrun_scripts(tree) == []
    (tree / "usr" / "lib" / "site" / "grub").chmod(0o755)  # now update-grub would run it
    assert bootloader.unrun_scripts(tree) == ["/etc/grub.d/50_site"]
    (grub_d / "50_site").unlink()
    with (grub_d / "40_custom").open("a") as custom:
        custom.write("set superusers=admin\npassword_pbkdf2 admin grub.pbkdf2.sha512.10000.AB\n")
    (grub_d / "20_memtest86+").write_text("#!/bin/sh\necho \"menuentry 'Memory test' {}\"\n")
    (grub_d / "20_memtest86+").chmod(0o755)
    (tree / "boot" / "grub" / "custom.cfg").write_text("set timeout=30\n")
    assert bootloader.unrun_scripts(tree) == [
        "/etc/grub.d/20_memtest86+",
        "/etc/grub.d/40_custom (changed)",
        "/boot/grub/custom.cfg",
    ]
    with pytest.raises(BuildError, match=r"20_memtest86\+, /etc/grub.d/40_custom \(changed\)") as err:
        bootloader.check_cfg(tree, log_file=None, runtime=RUNTIME)
    assert err.value.hint is not None and "provisioner=vm" in err.value.hint
