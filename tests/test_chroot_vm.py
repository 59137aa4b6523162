"""The chroot runner for real: the suite's debian-12 image is provisioned in a chroot at native speed, its
disk made offline and booted once (verify: goss final phase and hygiene); an interrupted chroot stage
(SIGINT, SIGTERM, and SIGTERM to `make`) leaves no mount, no process and no cache entry behind; and (`make
test-vm-runner`) the VM runner makes an image with the same package list, whose verify boot makes the same
checks, all passed."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest

from conftest import SITE_MAKE_VAR, interrupt_build, processes_naming
from kiln import config
from kiln.artifacts import filelist, kernel
from kiln.build import pipeline as build
from kiln.build import stages
from kiln.core.builddir import BuildDir
from kiln.goss import treephase
from kiln_runtime import RUNTIME

REPO = Path(__file__).resolve().parents[1]
pytestmark = [pytest.mark.vm, pytest.mark.skipif(os.geteuid() != 0, reason="the chroot runner needs root")]


def _accel() -> str:
    return os.environ.get("KILN_TEST_ACCELERATOR", "tcg")


def _mounts_under(path: Path) -> list[str]:
    text = subprocess.run(["findmnt", "-rn", "-o", "TARGET"], capture_output=True, text=True).stdout
    return [m for m in text.splitlines() if m.startswith(str(path))]


def _rooted_under(path: Path) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if os.readlink(entry / "root").startswith(str(path)):
                    found.append(int(entry.name))
            except OSError:
                continue
    return found


def test_the_suite_image_was_provisioned_in_a_chroot_and_booted_once(built_image):
    """The shared image (config/debian-12.json: provisioner chroot): no build VM, the build-phase checks
    in the chroot, one boot for verify, and no mount or process left behind."""
    out = built_image.output
    if not out:
        pytest.skip("KILN_TEST_BUILD_DIR: the image was not built by this session")
    assert "Waiting for SSH" not in out and "packer build" not in out, out[-3000:]
    # a warm local cache (not CI's) gives the kubernetes stage from it: its build-phase checks ran then
    if "kubernetes: reusing stage" not in out:
        assert re.search(r"goss build phase: \d+ checks, 0 failed \(in the chroot", out), out[-3000:]
    assert "disk made from the tree" in out and "checks passed" in out  # a tree: only the chroot runner's
    assert not _mounts_under(built_image.path.parent) and not _rooted_under(built_image.path.parent)
    # nothing of the build host's network in the image: mmdebstrap copies its resolv.conf into the base
    listing = built_image.dir.path / f"{built_image.dir.name}{filelist.SUFFIX}"
    files = {e["path"]: e for e in map(json.loads, listing.read_text().splitlines())}
    assert (files["/etc/resolv.conf"]["size"], files["/etc/resolv.conf"]["mode"]) == (0, "0644")
    assert not [p for p in files if p.startswith("/etc/ssh/ssh_host_")]


@pytest.mark.vm_runner
def test_the_vm_runner_image_has_the_chroot_images_packages(built_image, tmp_path):
    """The same inputs through the VM runner (provisioner vm): the same package list, and the same checks
    of the one verify boot, all passed (the site's checks of the image at rest made on the disk after
    shutdown); `make test-vm-runner` (~13 minutes of TCG beside an existing suite image; not in .ci/run)."""
    out = tmp_path / "out"
    flags = f"-var provisioner=vm -var output_dir={out} -var accelerator={_accel()}"
    started = time.monotonic()
    run = subprocess.run(
        ["make", "--no-print-directory", "build-qemu-debian-12", "K8S_STANDIN=1", SITE_MAKE_VAR,
         f"PACKER_FLAGS={flags}", "FORMATS=qcow2"],
        cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    took = time.monotonic() - started
    assert run.returncode == 0, run.stdout[-6000:]
    text = _log_of(out).read_text()
    assert "Waiting for SSH" in text  # provisioned in a booted build VM
    assert re.search(r"goss build phase: \d+ checks, 0 failed \(on the disk at rest, after sysprep and", text)
    (path,) = [p for p in out.iterdir() if p.is_dir() and not p.name.startswith(".") and p.name != "logs"]
    assert treephase.record_path(path).is_file(), "the record of what passed at rest, as the chroot runner's"
    vm_packages = (path / f"{BuildDir.open(path).name}.packages").read_text().splitlines()
    chroot_packages = (built_image.path / f"{built_image.dir.name}.packages").read_text().splitlines()
    assert set(chroot_packages) == set(vm_packages), sorted(set(chroot_packages) ^ set(vm_packages))
    vm_checks, chroot_checks = _checks(path), _checks(built_image.path)
    assert vm_checks, f"{path}/goss/report.json: no checks"
    assert vm_checks == chroot_checks, sorted(set(vm_checks.items()) ^ set(chroot_checks.items()))
    assert "failed" not in vm_checks.values(), sorted(k for k, v in vm_checks.items() if v == "failed")
    print(
        f"\nVM runner: {took:.0f}s; chroot runner (the suite image, with verify): {built_image.seconds:.0f}s"
    )


def _checks(build_dir: Path) -> dict[tuple[str, str, str], str]:
    """What the verify boot checked on a build (goss/report.json): (type, id, property) -> its outcome. The
    boot's one-time instance id (in the path of cloud-init's instance dir) is written as kiln-verify-ID."""
    path = build_dir / "goss" / "report.json"
    if not path.is_file():
        pytest.fail(f"{path}: missing; the build was not verified (made with --no-verify?)")
    report = json.loads(path.read_text())
    return {(r["resource-type"], re.sub(r"kiln-verify-[0-9a-f]+", "kiln-verify-ID", r["resource-id"]),
             r["property"]): "skipped" if r["skipped"] else "passed" if r["successful"] else "failed"
            for r in report["results"]}  # fmt: skip


def _log_of(out: Path) -> Path:
    (path,) = [p for p in out.iterdir() if p.is_dir() and not p.name.startswith(".") and p.name != "logs"]
    return path / "build.log"


# SIGTERM's case also builds again after the interruption (a whole os, kubernetes and finalize): vm_more
@pytest.mark.parametrize(
    "sig", [signal.SIGINT, pytest.param(signal.SIGTERM, marks=pytest.mark.vm_more)], ids=["SIGINT", "SIGTERM"]
)
def test_an_interrupted_chroot_stage_leaves_no_mount_process_or_cache_entry(built_image, tmp_path, sig):
    cache_dir = config.load("debian-12", repo_root=REPO).path("cache_dir")
    extra = "jq" if sig == signal.SIGINT else "jq tree"
    overrides = {"provisioner": "chroot", "extra_packages": extra}
    sid = build.plan_ids(config.load("debian-12", overrides=overrides, repo_root=REPO), RUNTIME)["os"].id
    out = tmp_path / "out"
    argv = [str(REPO / ".venv/bin/kiln"), "build", "debian-12", "--no-verify", "-var", "provisioner=chroot",
            "-var", f"extra_packages={extra}", "-var", f"output_dir={out}",
            "-var", "formats=qcow2"]  # fmt: skip
    log = tmp_path / "log"
    # Ansible at work in the tree, its mounts in place, 4 s after the stage starts provisioning
    interrupt_build(argv, log, "provisioning in a chroot", sig, wait=300, poll=0.5, settle=4)
    time.sleep(1)
    _assert_nothing_left(tmp_path, out, cache_dir, sid)
    if sig == signal.SIGTERM:  # the next build goes through (with the stand-in: the kubernetes stage too),
        # from a hardened shell: umask 077, Ansible settings that would break the build if they reached
        # kiln's Ansible (no such Python), a locale the tree does not have, and a TMPDIR only the host has
        version = config.load("debian-12", repo_root=REPO)["kubernetes_semver"]
        standin = [str(REPO / ".venv/bin/python"), "hack/k8s_standin.py", "run", "--version", version, "--"]
        host_tmp = tmp_path / "host-tmp"
        host_tmp.mkdir()
        shell = {"ANSIBLE_PYTHON_INTERPRETER": "/nonexistent/python3", "ANSIBLE_FORCE_COLOR": "1",
                 "LANG": "en_US.UTF-8", "LANGUAGE": "de", "TMPDIR": str(host_tmp)}  # fmt: skip
        role = tmp_path / "site_role"  # a user's role, as they are written: no modes given
        (role / "tasks").mkdir(parents=True)
        (role / "tasks" / "main.yml").write_text(SITE_ROLE)
        more = ["--var-file", "{varfile}", "-var", f"extra_roles_after={role}"]
        again = subprocess.run([*standin, *argv, *more], cwd=REPO, capture_output=True, text=True,
                               env={**os.environ, "PACKER_VAR_FILES": "", **shell}, umask=0o077)  # fmt: skip
        assert again.returncode == 0, (again.stdout + again.stderr)[-3000:]
        assert "environment: ANSIBLE_FORCE_COLOR, ANSIBLE_PYTHON_INTERPRETER (kiln's" in again.stdout
        logs = list(out.glob("*/build.log"))
        assert logs and "\x1b[" not in logs[0].read_text()  # Ansible's output as kiln's ansible.cfg sets it
        # every file both images have has the same mode as in the suite's image, built under umask 022
        mine = filelist.read(next(out.glob("*/*.files.jsonl")))
        theirs = filelist.read(next(built_image.path.glob("*.files.jsonl")))
        differ = {p: (mine[p]["mode"], theirs[p]["mode"]) for p in mine.keys() & theirs.keys()
                  if mine[p]["mode"] != theirs[p]["mode"]}  # fmt: skip
        assert not differ, sorted(differ.items())[:20]
        assert (mine["/etc/kiln-site.conf"]["mode"], mine["/etc/kiln-site.d"]["mode"]) == ("0644", "0755")
        assert "/etc/sysctl.d/90-kiln-site.conf" in mine, "the sysctl is in the image, for its boot to apply"
        assert "/etc/kiln-site.d/built-by" in mine, "packer_builder_type is search('qemu'), as in a build VM"


SITE_ROLE = """\
- name: A site file
  ansible.builtin.copy:
    content: "site=1\\n"
    dest: /etc/kiln-site.conf
- name: A site directory
  ansible.builtin.file:
    path: /etc/kiln-site.d
    state: directory
- name: A temp file, as maintainer scripts and site scripts make them
  ansible.builtin.shell: f=$(mktemp) && rm -f "$f"
- name: The tree's own locale
  ansible.builtin.shell: test "$(perl -e 1 2>&1)" = ""
- name: A sysctl as written for a build VM (applied live there; written for the boot in a chroot)
  ansible.posix.sysctl:
    name: vm.max_map_count
    value: "262144"
    sysctl_file: /etc/sysctl.d/90-kiln-site.conf
- name: systemd told to reload and restart, as a role for a running system does (skipped in a chroot)
  ansible.builtin.shell: systemctl daemon-reload && systemctl restart containerd
- name: A reboot, as after a kernel upgrade (the finished image's boot, in a chroot)
  ansible.builtin.reboot:
- name: What Packer's Ansible provisioner passes, as image-builder's roles test it (both runners give it)
  ansible.builtin.copy:
    content: "{{ packer_builder_type }} {{ packer_build_name }}\n"
    dest: /etc/kiln-site.d/built-by
  when: packer_builder_type is search('qemu') and packer_build_name is not search('cvm')
- name: And image-builder's Ansible modprobe module, and its sysprep's journal rotation
  ansible.builtin.shell: journalctl --rotate && journalctl -m --vacuum-time=1s
- community.general.modprobe: {name: br_netfilter, state: present}
"""


def _assert_nothing_left(tmp_path: Path, out: Path, cache_dir: Path, sid: str) -> None:
    """After an interrupted chroot stage: no mount and no process rooted in the test's dirs, no cache entry
    (or half-made one) for the stage, no output but the log."""
    assert not _mounts_under(tmp_path), _mounts_under(tmp_path)
    assert not _rooted_under(tmp_path) and not _rooted_under(out)
    assert stages.lookup(cache_dir, sid) is None
    assert not list(stages.root(cache_dir).glob(f".{sid}.tmp-*")), "no half-made stage"
    leftovers = [p for p in out.iterdir() if p.name != "logs"] if out.exists() else []
    assert not leftovers, leftovers


def test_stopping_make_mid_chroot_stage_stops_kiln_and_leaves_nothing(built_image, tmp_path):
    """`kill MAKE_PID` during `make build-qemu-debian-12 K8S_STANDIN=1`'s chroot stage: SIGTERM to make alone
    (a CI runner's or a supervisor's stop), which make passes to its child only. It reaches kiln (the recipe
    execs the stand-in wrapper, which passes it on), and kiln cleans up as for its own SIGTERM."""
    cache_dir = config.load("debian-12", repo_root=REPO).path("cache_dir")
    extra = "jq less"
    overrides = {"provisioner": "chroot", "extra_packages": extra}
    sid = build.plan_ids(config.load("debian-12", overrides=overrides, repo_root=REPO), RUNTIME)["os"].id
    out = tmp_path / "out"
    flags = f"-var provisioner=chroot -var 'extra_packages={extra}' -var output_dir={out} -var formats=qcow2"
    argv = ["make", "--no-print-directory", "-o", "deps", "build-qemu-debian-12", "K8S_STANDIN=1",
            f"PACKER_FLAGS={flags}"]  # fmt: skip
    log = tmp_path / "log"
    interrupt_build(argv, log, "provisioning in a chroot", signal.SIGTERM, wait=300, poll=0.5, settle=4,
                    code=-signal.SIGTERM)  # fmt: skip
    text = log.read_text()
    assert "interrupted" in text.lower(), text[-3000:]  # kiln's own cleanup ran, not the watchdog's
    time.sleep(1)
    assert not processes_naming(str(tmp_path)), "kiln (or the stand-in wrapper) outlived make"
    _assert_nothing_left(tmp_path, out, cache_dir, sid)


POSTINST = """#!/bin/sh
# a package whose postinst starts its service: once through policy-rc.d, the way invoke-rc.d and
# deb-systemd-invoke ask, and once behind its back, as some postinsts do
set -e
if [ "$1" = configure ]; then
    rc=0
    /usr/sbin/policy-rc.d kiln-test-daemon start || rc=$?
    echo "$rc" > /var/lib/kiln-test-daemon.policy
    start-stop-daemon --start --background --make-pidfile --pidfile /var/lib/kiln-test-daemon.pid \\
        --exec /bin/sleep -- 600
fi
"""


def _os_stage_tree(built_image, tmp_path: Path) -> tuple[Path, Path]:
    """A copy of the suite image's os-stage tree (from the stage cache), and a work dir for a stage on it."""
    from kiln.build import chroot

    log = (built_image.path / "build.log").read_text()
    found = re.search(r"os: (?:cached as stage|ok in [\d.]+s reused) ([0-9a-f]{12})", log)
    if found is None:
        pytest.skip("the suite image's build log names no os stage (KILN_TEST_BUILD_DIR of another kind)")
    cache_dir = config.load("debian-12", repo_root=REPO).path("cache_dir")
    (entry,) = stages.root(cache_dir).glob(f"{found.group(1)}*")
    tree, work = tmp_path / "tree", tmp_path / "work"
    work.mkdir()
    chroot.unpack(entry / stages.TREE, tree, log_file=None, runtime=RUNTIME)
    return tree, work


def _daemon_deb(where: Path) -> Path:
    root = where / "pkg"
    (root / "DEBIAN").mkdir(parents=True)
    (root / "DEBIAN" / "control").write_text(
        "Package: kiln-test-daemon\nVersion: 1.0\nArchitecture: all\n"
        "Maintainer: kiln tests <t@kiln.invalid>\nDescription: kiln test: a postinst starts a daemon\n"
    )
    (root / "DEBIAN" / "postinst").write_text(POSTINST)
    (root / "DEBIAN" / "postinst").chmod(0o755)
    deb = where / "kiln-test-daemon.deb"
    subprocess.run(["dpkg-deb", "--root-owner-group", "--build", str(root), str(deb)], check=True,
                   capture_output=True)  # fmt: skip
    return deb


def test_a_postinst_that_starts_a_service_leaves_no_process_after_the_stage(built_image, tmp_path):
    """The suite image's os-stage tree, provisioned again as a stage is (kiln.build.chroot.run_playbooks:
    Ansible's chroot connection in the stage's namespace and mounts) with a play that installs a package
    whose postinst starts a daemon: policy-rc.d says no (101) while the stage runs, the daemon that
    started anyway is gone when the stage ends, and nothing stays mounted or rooted in the tree."""
    from kiln.build import chroot, standins

    tree, work = _os_stage_tree(built_image, tmp_path)
    shutil.copy(_daemon_deb(tmp_path), tree / "tmp" / "kiln-test-daemon.deb")
    play = tmp_path / "play.yml"
    play.write_text(
        "- hosts: all\n  gather_facts: false\n  tasks:\n"
        "    - ansible.builtin.command: dpkg -i /tmp/kiln-test-daemon.deb\n"
    )
    chroot.run_playbooks(tree, work, [play], {}, repo_root=REPO, log_file=None, runtime=RUNTIME)
    assert (tree / "var/lib/kiln-test-daemon.policy").read_text().strip() == "101"  # no service starts
    pid = int((tree / "var/lib/kiln-test-daemon.pid").read_text())  # and yet this one did
    time.sleep(0.5)
    assert pid not in _rooted_under(tree)  # killed: gone, or a zombie until its parent collects it
    assert not _rooted_under(tree) and not _mounts_under(tmp_path)
    assert not (tree / standins.POLICY_RC_D).exists()  # the stage's policy goes with it


def test_a_role_that_installs_a_kernel_gets_the_image_booting_it(built_image, tmp_path):
    """A role installs Debian's cloud kernel into the suite image's os-stage tree, as a stage runs it. The
    package's hooks run in the chroot: initramfs-tools makes its initrd, and zz-update-grub finds update-grub
    diverted to a note (before, grub-probe failed the stage: "cannot find a device for /"). ansible_kernel
    names the image's kernel, not the build host's; the grub.cfg finalize writes boots the new kernel with
    the parameter a role put into grub.d; update-grub and dpkg's diversions are back as they were."""
    from kiln.build import bootloader, chroot

    tree, work = _os_stage_tree(built_image, tmp_path)
    base_kernel = kernel.newest(tree)
    kept = {p: (tree / p).read_bytes() for p in ("usr/sbin/update-grub", "var/lib/dpkg/diversions")}
    play = "- hosts: all\n  gather_facts: true\n  tasks:\n"
    facts = "    - copy: {content: '{{ ansible_kernel }}|{{ ansible_kernel_version }}', dest: DEST}\n"
    install, after = tmp_path / "install.yml", tmp_path / "after.yml"
    install.write_text(
        play
        + facts.replace("DEST", "/tmp/kernel-before")
        + "    - ansible.builtin.apt: {name: linux-image-cloud-amd64, update_cache: true}\n"
        + "    - ansible.builtin.copy:\n        dest: /etc/default/grub.d/50-site.cfg\n"
        + "        content: 'GRUB_CMDLINE_LINUX=\"$GRUB_CMDLINE_LINUX site.param=1\"'\n"
        + "    - ansible.builtin.command: update-grub\n"
    )
    after.write_text(play + facts.replace("DEST", "/tmp/kernel-after"))
    chroot.run_playbooks(tree, work, [install, after], {}, repo_root=REPO, log_file=None, runtime=RUNTIME)
    if base_kernel == os.uname().release:
        pytest.skip(f"this host runs the image's kernel, {base_kernel}: the facts cannot tell them apart")
    before_kernel, before_build = (tree / "tmp/kernel-before").read_text().split("|")
    assert before_kernel == base_kernel
    assert before_build.startswith("#1 SMP") and "Debian" in before_build
    cloud = kernel.newest(tree)
    assert cloud.endswith("-cloud-amd64") and (tree / f"boot/initrd.img-{cloud}").is_file()
    assert (tree / "tmp/kernel-after").read_text().split("|")[0] == cloud
    assert {p: (tree / p).read_bytes() for p in kept} == kept
    assert not list((tree / "usr/sbin").glob("*.kiln-stage"))
    # initramfs-tools copies /sbin/modprobe into the initrd it made during the stage: the real one (a link
    # to kmod), not kiln's stand-in, which the initrd could not run (no perl); and the stage's hook is gone
    listing = subprocess.run(["chroot", str(tree), "lsinitramfs", "-l", f"/boot/initrd.img-{cloud}"],
                             capture_output=True, text=True, check=True).stdout  # fmt: skip
    modprobe = [line for line in listing.splitlines() if re.search(r"\s(usr/)?sbin/modprobe( |$)", line)]
    assert modprobe and all(line.startswith("l") and line.endswith("-> /bin/kmod") for line in modprobe), (
        modprobe
    )
    assert not (tree / "etc/initramfs-tools/hooks/zz-kiln-stage").exists()
    uuid = "a04e2b00-b1e6-54ec-8743-d1441368ae80"
    cfg = bootloader.write_cfg(tree, uuid, kernel.newest(tree), log_file=None, runtime=RUNTIME).read_text()
    default = cfg[cfg.index("menuentry ") :].split("}", 1)[0]
    assert f"linux\t/boot/vmlinuz-{cloud} root=UUID={uuid} ro " in default and "site.param=1" in default
    assert f"initrd\t/boot/initrd.img-{cloud}" in default


BUILD_VM_ROLE = """\
- hosts: all
  gather_facts: true
  tasks:
    - name: sshd's config, validated as hardening roles do (host keys, /run/sshd)
      ansible.builtin.lineinfile:
        {path: /etc/ssh/sshd_config, line: "PermitRootLogin no", validate: "/usr/sbin/sshd -t -f %s"}
    - name: wait for cloud-init, as a build VM's playbook does before apt
      ansible.builtin.shell: timeout 60 cloud-init status --wait > /tmp/kiln-test-cloud-init
    - name: a daemon restarted with service(8)
      ansible.builtin.shell: service ssh restart 2> /tmp/kiln-test-service
    - name: image-builder's swapoff, when the machine has swap
      ansible.builtin.command: swapoff -a
      when: ansible_memory_mb.swap.total != 0
    - name: the memory facts
      ansible.builtin.copy:
        content: >-
          {{ ansible_swaptotal_mb }} {{ ansible_memory_mb.swap.total }}
          {{ ansible_memory_mb.real.total }}
        dest: /tmp/kiln-test-memory
    - name: systemd-resolved, whose postinst links resolv.conf to its stub
      ansible.builtin.apt: {name: systemd-resolved, update_cache: true}
    - name: what the stage resolves names with, through the link
      ansible.builtin.shell: cat /etc/resolv.conf > /tmp/kiln-test-resolv
    - name: kernel modules loaded now, as a build VM's role loads them
      ansible.builtin.shell: (modprobe overlay && modprobe br_netfilter) 2> /tmp/kiln-test-modprobe
    - name: a module the image's kernel lacks fails, as it does in a build VM
      ansible.builtin.command: modprobe kiln_no_such_module
      register: kiln_no_module
      failed_when: >-
        kiln_no_module.rc == 0 or
        ("not in the image's kernel, /lib/modules/" ~ ansible_kernel) not in kiln_no_module.stderr
    - name: the kernel command line, as a role that adds a missing boot parameter reads it
      ansible.builtin.shell: cat /proc/cmdline > /tmp/kiln-test-cmdline
    - name: setup's cmdline facts
      ansible.builtin.assert:
        that: ansible_cmdline.BOOT_IMAGE == "/boot/vmlinuz-" ~ ansible_kernel and ansible_cmdline.ro
    - name: image-builder's module loads, through Ansible's modprobe module
      community.general.modprobe: {name: "{{ item }}", state: present}
      loop: [overlay, br_netfilter]
    - name: the short name, a module kept for the boot with its parameters
      modprobe: {name: dummy, state: present, params: numdummies=2, persistent: present}
    - name: an interpreter of the play's own, which says it ran
      ansible.builtin.copy:
        dest: /usr/local/bin/kiln-test-python
        mode: "0755"
        content: |
          #!/bin/sh
          echo "$@" > /tmp/kiln-test-python
          exec /usr/bin/python3 "$@"
    - name: a module built into the image's kernel, by a play with that interpreter
      community.general.modprobe: {name: unix, state: present}
      vars: {ansible_python_interpreter: /usr/local/bin/kiln-test-python}
      register: kiln_builtin
      failed_when: kiln_builtin is failed or kiln_builtin is changed
    - name: a module loaded, as a VM reports it (changed)
      community.general.modprobe: {name: nbd}
      register: kiln_nbd
      failed_when: kiln_nbd is failed or kiln_nbd is not changed
    - name: and loaded again (there already)
      community.general.modprobe: {name: nbd}
      register: kiln_nbd
      failed_when: kiln_nbd is failed or kiln_nbd is changed
    - name: the module fails for a module the image's kernel lacks
      community.general.modprobe: {name: kiln_no_such_module}
      register: kiln_no_module
      failed_when: kiln_no_module is succeeded or "not in the image's kernel" not in kiln_no_module.msg
    - name: image-builder's kernel parameters, set now and kept in a file
      ansible.posix.sysctl:
        {name: vm.overcommit_ratio, value: "77", sysctl_set: true, reload: true,
         sysctl_file: /etc/sysctl.d/90-kiln-test.conf}
    - name: every sysctl file applied now
      ansible.builtin.shell: sysctl --system 2> /tmp/kiln-test-sysctl
    - name: swap off, as many roles do without asking the facts first
      ansible.builtin.shell: swapoff -a 2> /tmp/kiln-test-swapoff
    - name: image-builder's sysprep, which rotates the journal before it empties it
      ansible.builtin.shell: (journalctl --rotate && journalctl -m --vacuum-time=1s) 2> /tmp/kiln-test-journal
    - name: free-space zeroing, as an image's cleanup does before the disk is compressed
      ansible.builtin.shell: (dd if=/dev/zero of=/EMPTY bs=1M; rm -f /EMPTY) 2> /tmp/kiln-test-dd
    - name: the file systems in use, from the mount facts, as dev-sec's os_hardening finds them (vfat kept)
      ansible.builtin.copy:
        content: "{{ ansible_mounts | map(attribute='mount') | zip(ansible_mounts | map(attribute='fstype'))
          | map('join', ' ') | join('\\n') }}\n"
        dest: /tmp/kiln-test-mounts
    - name: /proc with hidepid, as dev-sec's os_hardening mounts it (fstab, then a remount)
      ansible.posix.mount:
        path: /proc
        src: proc
        fstype: proc
        opts: rw,nosuid,nodev,noexec,relatime,hidepid=2
        state: mounted
    - name: every file system of the fstab mounted, as many roles do after editing it
      ansible.builtin.shell: mount -a 2> /tmp/kiln-test-mount
"""


def test_a_role_written_for_a_build_vm_finds_what_a_booted_vm_has(built_image, tmp_path):
    """The suite image's os-stage tree, provisioned as a stage is, with tasks a build VM's roles carry: `sshd
    -t` finds host keys and /run/sshd, `cloud-init status --wait` returns (it waited forever), `service ssh
    restart` starts nothing, image-builder's `swapoff -a` is skipped (no swap, as in a VM from the base
    disk), systemd-resolved's postinst links resolv.conf to its stub (a bind mount made that fail) while
    names still resolve, and `modprobe` and `sysctl` (image-builder's `sysctl_set` and `reload`) pass without
    touching the build host's kernel (they failed on the read-only /proc/sys and the build host's modules).
    Afterwards: no host key, the tree's /run and dpkg's diversions as they were, the link kept, and its
    backup holds the tree's own file, not the build host's name servers."""
    from kiln.build import chroot

    tree, work = _os_stage_tree(built_image, tmp_path)
    resolv = tree / "etc/resolv.conf"
    own = resolv.read_bytes() if resolv.is_file() and not resolv.is_symlink() else None
    run_before = sorted(os.listdir(tree / "run"))
    diversions = (tree / "var/lib/dpkg/diversions").read_bytes()
    overcommit = Path("/proc/sys/vm/overcommit_ratio").read_text()
    assert overcommit.strip() != "77"
    play = tmp_path / "play.yml"
    play.write_text(BUILD_VM_ROLE)
    chroot.run_playbooks(tree, work, [play], {}, repo_root=REPO, log_file=None, runtime=RUNTIME)
    assert "status: done" in (tree / "tmp/kiln-test-cloud-init").read_text()
    swap, swap_total, real = (tree / "tmp/kiln-test-memory").read_text().split()
    assert (swap, swap_total) == ("0", "0") and int(real) > 0  # no swap, as a VM from the base disk; RAM kept
    assert "service ssh restart skipped in a chroot stage" in (tree / "tmp/kiln-test-service").read_text()
    assert (tree / "tmp/kiln-test-resolv").read_bytes() == Path("/etc/resolv.conf").read_bytes()
    assert not list((tree / "etc/ssh").glob("ssh_host_*")), "the stage's throwaway host keys are gone"
    assert os.readlink(resolv) == "../run/systemd/resolve/stub-resolv.conf"
    if own is not None:
        assert (tree / "etc/.resolv.conf.systemd-resolved.bak").read_bytes() == own
    assert sorted(os.listdir(tree / "run")) == run_before
    assert (tree / "var/lib/dpkg/diversions").read_bytes() == diversions
    assert "kiln" not in (tree / "usr/sbin/service").read_text()
    # modprobe and sysctl: nothing reaches the build host's kernel, the files stay for the boot
    assert "modprobe br_netfilter skipped in a chroot stage" in (tree / "tmp/kiln-test-modprobe").read_text()
    assert "sysctl --system not applied in a chroot stage" in (tree / "tmp/kiln-test-sysctl").read_text()
    assert (tree / "etc/sysctl.d/90-kiln-test.conf").read_text() == "vm.overcommit_ratio=77\n"
    assert Path("/proc/sys/vm/overcommit_ratio").read_text() == overcommit
    assert (tree / "usr/sbin/sysctl").read_bytes()[:4] == b"\x7fELF"
    assert os.readlink(tree / "usr/sbin/modprobe") == "/bin/kmod"
    assert (tree / "etc/modules-load.d/dummy.conf").read_text() == "dummy\n"
    assert (tree / "tmp/kiln-test-python").read_text().startswith("/run/kiln-stage/image_kernel.py ")
    (tree / "usr/local/bin/kiln-test-python").unlink()
    cmdline = (tree / "tmp/kiln-test-cmdline").read_text()
    assert cmdline.startswith(f"BOOT_IMAGE=/boot/vmlinuz-{kernel.newest(tree)} root=UUID=")
    assert " ro " in cmdline
    assert "console=ttyS0,115200n8" in cmdline.split() and cmdline != Path("/proc/cmdline").read_text()
    assert (tree / "etc/modprobe.d/dummy.conf").read_text() == "options dummy numdummies=2\n"
    zeroing = (tree / "tmp/kiln-test-dd").read_text()
    assert "dd if=/dev/zero of=/EMPTY bs=1M skipped in a chroot stage" in zeroing
    assert (tree / "usr/bin/dd").read_bytes()[:4] == b"\x7fELF"
    assert "swapoff -a skipped in a chroot stage" in (tree / "tmp/kiln-test-swapoff").read_text()
    assert (tree / "usr/sbin/swapoff").read_bytes()[:4] == b"\x7fELF"
    journal = (tree / "tmp/kiln-test-journal").read_text()
    assert "journalctl --rotate skipped in a chroot stage" in journal and "Vacuuming done" in journal
    assert (tree / "usr/bin/journalctl").read_bytes()[:4] == b"\x7fELF"
    # the image's file systems in ansible_mounts; a remount and mount -a skipped, fstab kept for the boot
    mounts = [line.strip() for line in (tree / "tmp/kiln-test-mounts").read_text().splitlines()]
    assert "/ ext4" in mounts and "/boot/efi vfat" in mounts, mounts
    assert "proc /proc proc rw,nosuid,nodev,noexec,relatime,hidepid=2 0 0" in (tree / "etc/fstab").read_text()
    assert "kiln: mount -a skipped in a chroot stage" in (tree / "tmp/kiln-test-mount").read_text()
    assert (tree / "usr/bin/mount").read_bytes()[:4] == b"\x7fELF"
    assert "hidepid" not in Path("/proc/self/mountinfo").read_text()


FILL = """\
- hosts: all
  gather_facts: false
  tasks:
    - name: a writer with no end (zeroing that dd's stand-in does not know)
      ansible.builtin.shell: cat /dev/zero > /var/tmp/kiln-test-fill
"""


def test_a_stage_that_writes_more_than_the_images_disk_holds_is_stopped(built_image, tmp_path):
    """A build VM's writes end at its disk; a chroot stage's would end at the build host's. The stage is
    stopped once it wrote more than the image's disk holds (here 256 MiB), with an error saying so, and the
    stand-ins are put back."""
    from kiln.build import chroot
    from kiln.core import space
    from kiln.core.errors import DiskFullError

    tree, work = _os_stage_tree(built_image, tmp_path)
    play = tmp_path / "fill.yml"
    play.write_text(FILL)
    free = space.free(tree)
    stopped = r"more than the image's disk holds \(256.0 MiB, disk_size\)"
    with pytest.raises(DiskFullError, match=stopped) as err:
        chroot.run_playbooks(tree, work, [play], {}, repo_root=REPO, log_file=None, room=256 << 20,
                             runtime=RUNTIME)  # fmt: skip
    assert err.value.hint is not None and "free-space zeroing" in err.value.hint
    written = (tree / "var/tmp/kiln-test-fill").stat().st_size
    assert 256 << 20 < written < 4 << 30 and space.free(tree) > free - (4 << 30)
    assert (tree / "usr/bin/dd").read_bytes()[:4] == b"\x7fELF"
    assert not [*(tree / "usr/bin").glob("*.kiln-stage"), *(tree / "usr/sbin").glob("*.kiln-stage")]


LOAD_IMAGES = """\
- hosts: all
  gather_facts: false
  tasks:
    - name: a Kubernetes release image tar, loaded as image-builder's kubernetes role loads it
      ansible.builtin.command: >-
        ctr --address=/var/run/containerd/containerd.sock images import /tmp/kube-proxy.tar
      environment:
        CONTAINERD_NAMESPACE: k8s.io
    - name: OCI archives, ctr's own default address
      ansible.builtin.command: ctr -n k8s.io images import /tmp/{{ item }}.tar
      loop: [pause, layers]
    - ansible.builtin.shell: ctr -n k8s.io images ls -q > /tmp/kiln-test-images
"""
LIST_IMAGES = """\
- hosts: all
  gather_facts: false
  tasks:
    - ansible.builtin.shell: ctr -n k8s.io images ls -q > /tmp/kiln-test-images-2
"""


def test_a_role_that_loads_images_into_containerd_leaves_them_in_the_tree(built_image, tmp_path):
    """image-builder's kubernetes role loads the release's image tars with `ctr images import`, which needs a
    running containerd: in a stage it failed on /run/containerd/containerd.sock. The suite image's os-stage
    tree, provisioned as a stage is: the tree's own containerd starts for the first client and stops with
    the playbook; a second playbook starts it again and finds the images; they stay in the tree's
    /var/lib/containerd (content and unpacked layers), and nothing is left running or mounted."""
    import image_archives
    from kiln.build import chroot, ondemand

    tree, work = _os_stage_tree(built_image, tmp_path)
    proxy = image_archives.docker(tree / "tmp/kube-proxy.tar", "registry.k8s.io/kube-proxy", "v1.36.1")
    pause = image_archives.oci(tree / "tmp/pause.tar", "registry.k8s.io/pause:3.10.1")
    lower = {"usr/share/kiln-test/layers/keep": b"kept\n", "usr/share/kiln-test/layers/gone": b"deleted\n",
             "etc/kiln-test/old/a": b"hidden\n"}  # fmt: skip
    upper = {"usr/share/kiln-test/layers/.wh.gone": b"", "etc/kiln-test/old/.wh..wh..opq": b"",
             "etc/kiln-test/old/b": b"new\n"}  # fmt: skip
    image_archives.oci(tree / "tmp/layers.tar", "registry.k8s.io/kiln-test/layers:1", [lower, upper])
    plays = [tmp_path / "load.yml", tmp_path / "list.yml"]
    plays[0].write_text(LOAD_IMAGES)
    plays[1].write_text(LIST_IMAGES)
    log = tmp_path / "stage.log"
    with log.open("w") as out:
        chroot.run_playbooks(tree, work, plays, {}, repo_root=REPO, log_file=out, runtime=RUNTIME)
    wanted = {"registry.k8s.io/kube-proxy:v1.36.1", "registry.k8s.io/pause:3.10.1",
              "registry.k8s.io/kiln-test/layers:1"}  # fmt: skip
    for listed in ("tmp/kiln-test-images", "tmp/kiln-test-images-2"):
        assert wanted <= set((tree / listed).read_text().split()), listed
    said = log.read_text()
    assert said.count("started the tree's containerd") == 2
    # stopped at each playbook's end by kiln's SIGTERM, in time (before the stage kills what is left)
    assert said.count("stopped the tree's containerd (status 0") == 2, said[-3000:]
    store = tree / "var/lib/containerd"
    for digest in (proxy, pause):
        assert (
            store / "io.containerd.content.v1.content/blobs/sha256" / digest.removeprefix("sha256:")
        ).is_file()
    snapshots = store / "io.containerd.snapshotter.v1.overlayfs/snapshots"
    unpacked = [p for p in snapshots.glob("*/fs/usr/share/kiln-test/*") if p.is_file()]
    assert {p.name for p in unpacked} == {"kube-proxy", "pause:3.10.1"}
    # the upper layer's deletions, unpacked as overlayfs keeps them, survive the stage cache's tar
    packed = tmp_path / "tree.tar.zst"
    chroot.pack(tree, packed, log_file=None, runtime=RUNTIME)
    again = tmp_path / "again"
    chroot.unpack(packed, again, log_file=None, runtime=RUNTIME)
    for root in (tree, again):
        snaps = root / snapshots.relative_to(tree)
        (gone,) = [p for p in snaps.glob("*/fs/usr/share/kiln-test/layers/gone") if p.is_char_device()]
        assert gone.lstat().st_rdev == 0, "a whiteout"
        assert {p.read_bytes() for p in snaps.glob("*/fs/usr/share/kiln-test/layers/*") if p.is_file()} == {
            b"kept\n", b"deleted\n"}, "the lower layer as it was"  # fmt: skip
        (opaque,) = [d for d in snaps.glob("*/fs/etc/kiln-test/old") if (d / "b").exists()]
        assert os.getxattr(opaque, "trusted.overlay.opaque") == b"y" and not (opaque / "a").exists()
    assert (work / ondemand.LOG).stat().st_size > 0
    time.sleep(0.5)
    assert not _rooted_under(tree) and not _mounts_under(tmp_path)


APT_STAGE = """\
- hosts: all
  gather_facts: false
  tasks:
    - ansible.builtin.include_role: {name: "ROLE", tasks_from: apt-build}
    - name: what apt uses while the stage runs
      ansible.builtin.shell: |
        apt-config dump | grep -i '^Acquire::http::Proxy ' > /tmp/kiln-test-apt-proxy
        cat /etc/apt/sources.list > /tmp/kiln-test-apt-sources
    - ansible.builtin.include_role: {name: "ROLE", tasks_from: apt-after-build}
"""


def _apt_files(tree: Path) -> dict[str, bytes | str]:
    found: dict[str, bytes | str] = {}
    for path in sorted((tree / "etc/apt").rglob("*")):
        rel = str(path.relative_to(tree))
        found[rel] = (
            os.readlink(path) if path.is_symlink() else path.read_bytes() if path.is_file() else "dir"
        )
    return found


def test_a_stage_uses_its_own_builds_package_sources_and_no_tree_keeps_them(built_image, tmp_path):
    """Where packages come from (the proxy or package cache, the mirror, disable_public_repos) is not in the
    stage IDs, so a cached stage must not carry it: the suite image's os-stage tree (built with the site's
    disable_public_repos) has apt's own sources in place, the base's public mirror, and no proxy file; a
    stage on it, provisioned as a stage is, uses the package cache and the mirror it is given, and leaves
    /etc/apt as it found it."""
    from kiln.build import bootstrap, chroot

    tree, work = _os_stage_tree(built_image, tmp_path)
    apt = tree / "etc/apt"
    assert not (apt / "apt.conf.d/90kiln-proxy").exists()
    assert not list(apt.rglob("*.kiln-disabled")) and not (apt / "sources.list.kiln-build").exists()
    sources = (apt / "sources.list").read_text()
    assert f"deb {bootstrap.PUBLIC_MIRROR} bookworm main" in sources, sources
    assert (apt / "sources.list.d/kiln-extra.list").is_file()  # the site's extra_repos: content, kept
    # disable_public_repos' note: the kubernetes stage sets aside what the os stage did, and no more
    assert (apt / "kiln-disabled-sources").read_text().split() == ["sources.list"]
    listing = built_image.dir.path / f"{built_image.dir.name}{filelist.SUFFIX}"
    image = {json.loads(line)["path"] for line in listing.read_text().splitlines()}
    leftovers = [p for p in image if p.startswith("/etc/apt/") and ("kiln-disabled" in p or ".kiln-" in p)]
    assert (
        "/etc/apt/sources.list" in image and not leftovers and "/etc/apt/apt.conf.d/90kiln-proxy" not in image
    )
    before = _apt_files(tree)
    play = tmp_path / "play.yml"
    play.write_text(APT_STAGE.replace("ROLE", str(REPO / "ansible/roles/node")))
    given = {
        "apt_cache": "http://127.0.0.1:3142",
        "apt_mirror": "http://mirror.kiln.invalid/debian",
        "install_method": "bootstrap",
        "bootstrap_mirror": "http://bootstrap.kiln.invalid/debian",
        # the two facts the tasks read, given (gathering them in the chroot takes seconds per run)
        "ansible_os_family": "Debian",
        "ansible_distribution_release": "bookworm",
    }
    chroot.run_playbooks(tree, work, [play], given, repo_root=REPO, log_file=None, runtime=RUNTIME)
    assert (
        tree / "tmp/kiln-test-apt-proxy"
    ).read_text().strip() == 'Acquire::http::Proxy "http://127.0.0.1:3142";'
    during = (tree / "tmp/kiln-test-apt-sources").read_text()
    assert (
        "deb http://mirror.kiln.invalid/debian bookworm main" in during
        and bootstrap.PUBLIC_MIRROR not in during
    )
    assert _apt_files(tree) == before
    # without apt_mirror, a bootstrap target's stage uses its bootstrap_mirror
    chroot.run_playbooks(tree, work, [play], {**given, "apt_mirror": ""}, repo_root=REPO, log_file=None,
                         runtime=RUNTIME)  # fmt: skip
    assert (
        "deb http://bootstrap.kiln.invalid/debian bookworm main"
        in (tree / "tmp/kiln-test-apt-sources").read_text()
    )
    assert _apt_files(tree) == before
    # with disable_public_repos, apt_mirror is what the build uses instead of the distro's: it stays on
    chroot.run_playbooks(tree, work, [play], {**given, "disable_public_repos": True}, repo_root=REPO,
                         log_file=None, runtime=RUNTIME)  # fmt: skip
    assert "deb http://mirror.kiln.invalid/debian" in (tree / "tmp/kiln-test-apt-sources").read_text()
    assert _apt_files(tree) == before
    # a tree with deb822 sources only (no sources.list): the stage's sources.list goes again
    (apt / "sources.list").unlink()
    before = _apt_files(tree)
    chroot.run_playbooks(tree, work, [play], given, repo_root=REPO, log_file=None, runtime=RUNTIME)
    assert "deb http://mirror.kiln.invalid/debian" in (tree / "tmp/kiln-test-apt-sources").read_text()
    assert _apt_files(tree) == before
