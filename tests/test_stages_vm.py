"""The stage chain on the real debian-12 build (the session's `built_image` and the stage cache it filled):

- an unchanged rebuild is "up to date" and touches no file (inode and mtime of every file unchanged);
- two concurrent builds of another Kubernetes version reuse the `os` stage, make ONE `kubernetes` cache
  entry between them (whose in-guest goss check passed), pass the offline hygiene check, and list the same
  packages as the cold build (the stand-in Kubernetes binaries are not packages, so the lists are equal);
  neither boots for `kiln verify` (the session image's build and test_verify_vm do), to keep the suite inside
  its time budget;
- a build interrupted in the middle of a stage leaves no cache entry for it, no temp dir, no process.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import ALL_FORMATS, SITE_MAKE_VAR, SITE_VAR_FILES, interrupt_build
from kiln import config
from kiln.artifacts import compare
from kiln.build import cachecheck, stages
from kiln.build import pipeline as build
from kiln.core.builddir import BuildDir
from kiln_runtime import RUNTIME
from test_layers import read_newc
from test_vm_build import offline_hygiene

pytestmark = pytest.mark.vm

REPO = Path(__file__).resolve().parents[1]
OTHER_VERSION = "v1.31.4"
STANDIN = [sys.executable, str(REPO / "hack" / "k8s_standin.py"), "run"]


def _flags(out: Path) -> list[str]:
    accel = os.environ.get("KILN_TEST_ACCELERATOR", "tcg")
    return ["--var", f"output_dir={out}", "--var", f"accelerator={accel}"]


def _tree(root: Path) -> dict[str, tuple[int, int]]:
    paths = sorted(root.rglob("*"))
    return {str(p.relative_to(root)): (p.stat().st_ino, p.stat().st_mtime_ns) for p in paths}


def test_unchanged_rebuild_is_up_to_date_and_touches_nothing(built_image):
    out_root = built_image.path.parent
    before = _tree(out_root)
    started = time.monotonic()
    accel = os.environ.get("KILN_TEST_ACCELERATOR", "tcg")
    proc = subprocess.run(
        ["make", "--no-print-directory", "build-qemu-debian-12", "K8S_STANDIN=1", SITE_MAKE_VAR,
         f"PACKER_FLAGS=-var output_dir={out_root} -var accelerator={accel}", f"FORMATS={ALL_FORMATS}"],
        cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    took = time.monotonic() - started
    assert proc.returncode == 0, proc.stdout[-3000:]
    assert f"up to date: {built_image.path}" in proc.stdout, proc.stdout[-3000:]
    assert _tree(out_root) == before, "an up-to-date build must not touch a file"
    print(f"\nunchanged rebuild: {took:.1f}s (cold build {built_image.seconds:.0f}s)")


def _start(out: Path, log: Path) -> subprocess.Popen[bytes]:
    argv = [*STANDIN, "--version", OTHER_VERSION, "--", str(REPO / ".venv" / "bin" / "kiln"), "build",
            "debian-12", "--only", "qemu", "--var-file", "{varfile}", "--kubernetes-version", OTHER_VERSION,
            *_flags(out), "--no-verify"]  # fmt: skip
    env = {**os.environ, "PACKER_VAR_FILES": " ".join(str(p) for p in SITE_VAR_FILES)}  # as built_image
    with open(log, "wb") as fh:
        return subprocess.Popen(argv, cwd=REPO, stdout=fh, stderr=subprocess.STDOUT, env=env)


def _other_versions_kubernetes_stage() -> str:
    """The kubernetes stage ID of OTHER_VERSION's build (`_start`), from `kiln stages` in the same setting."""
    kiln = str(REPO / ".venv" / "bin" / "kiln")
    argv = [*STANDIN, "--version", OTHER_VERSION, "--", kiln, "stages", "debian-12", "--var-file",
            "{varfile}", "--var", f"kubernetes_semver={OTHER_VERSION}", "--json"]  # fmt: skip
    env = {**os.environ, "PACKER_VAR_FILES": " ".join(str(p) for p in SITE_VAR_FILES)}
    out = subprocess.run(argv, cwd=REPO, capture_output=True, text=True, env=env, check=True).stdout
    plan = json.loads(out[out.index("{") :])
    (sid,) = [s["id"] for s in plan["stages"] if s["stage"] == "kubernetes"]
    return str(sid)


def _plant_damaged(cache_dir: Path, built_image, sid: str) -> Path:
    """The suite image's kubernetes entry, hard-linked under `sid` with one byte of its packed tree changed
    (a copy: the suite's own entry keeps its bytes): a damaged cache entry where a build will look."""
    log = (built_image.path / "build.log").read_text()
    source = _suite_entry(log, cache_dir, "kubernetes")
    entry = stages.root(cache_dir) / sid
    subprocess.run(["cp", "-al", str(source), str(entry)], check=True)
    record = json.loads((entry / stages.RECORD).read_text())
    (entry / stages.RECORD).unlink()
    (entry / stages.RECORD).write_text(json.dumps({**record, "id": sid}))
    data = bytearray((entry / stages.TREE).read_bytes())
    data[len(data) // 2] ^= 0xFF
    (entry / stages.TREE).unlink()
    (entry / stages.TREE).write_bytes(bytes(data))
    return entry / stages.TREE


def test_another_kubernetes_version_reuses_the_os_stage_concurrently(built_image, tmp_path):
    """Two builds of OTHER_VERSION at once, the cache holding a damaged entry for their kubernetes stage:
    the first to take the stage's lock names it, removes it and makes the stage; the other waits and reuses
    that one. (The damaged entry costs the suite nothing: the stage is made here anyway.)"""
    cache_dir = config.load("debian-12", repo_root=REPO).path("cache_dir")
    sid = _other_versions_kubernetes_stage()
    if (stages.root(cache_dir) / sid).exists():  # a warm local cache: this test makes the stage itself
        cachecheck.evict_stage(cache_dir, sid)
    damaged = _plant_damaged(cache_dir, built_image, sid)
    started_wall = time.time()
    host_ansible = _mtime(Path("/tmp/.kiln-ansible"))  # the chroot runner's ANSIBLE_REMOTE_TEMP, as is
    outs = [tmp_path / "a", tmp_path / "b"]
    logs = [tmp_path / "a.log", tmp_path / "b.log"]
    started = time.monotonic()
    # both make and publish an image from the same cached stages; neither boots it again for verify
    procs = [_start(out, log) for out, log in zip(outs, logs, strict=True)]
    codes = [p.wait(timeout=3600) for p in procs]
    took = time.monotonic() - started
    texts = [log.read_text() for log in logs]
    for code, text in zip(codes, texts, strict=True):
        assert code == 0, text[-4000:]
        assert "os: reusing stage" in text, text[-4000:]
    assert sum("kubernetes: reusing stage" in t for t in texts) == 1, "one builds the stage, one reuses it"
    named = [
        t for t in texts if f"kubernetes: stage {sid[:12]} in the cache is damaged ({damaged}: not the " in t
    ]
    assert len(named) == 1 and "): removed; building it again" in named[0], texts[0][-3000:]
    record = stages.lookup(cache_dir, sid)
    assert record is not None and cachecheck.record_damage(cache_dir, record) is None, "made again, whole"
    checked = [t for t in texts if re.search(r"goss build phase: \d+ checks, 0 failed", t)]
    assert len(checked) == 1, "the kubernetes stage's in-guest goss check ran once and passed"
    made = [r for r in stages.entries(cache_dir) if r.stage == "kubernetes" and r.created >= started_wall]
    assert len(made) == 1, f"one kubernetes stage made between the two builds, not {len(made)}"
    # the package list's task on the build host kept Ansible's temp files in the build's work dir
    assert _mtime(Path("/tmp/.kiln-ansible")) == host_ansible
    cold = built_image.dir
    for out in outs:
        (path,) = [p for p in out.iterdir() if p.is_dir() and not p.name.startswith(".") and p.name != "logs"]
        bd = BuildDir.open(path)
        assert bd.kubernetes_semver == OTHER_VERSION
        cold_pkgs = set((cold.path / f"{cold.name}.packages").read_text().splitlines())
        new_pkgs = set((path / f"{bd.name}.packages").read_text().splitlines())
        kube_pkgs = {"kubelet", "kubeadm", "kubectl", "cri-tools", "kubernetes-cni"}
        diff = {line.split("\t")[0] for line in cold_pkgs ^ new_pkgs}
        assert diff <= kube_pkgs, f"package lists differ beyond Kubernetes: {sorted(diff)}"
    offline_hygiene(BuildDir.open(next(p for p in outs[0].iterdir() if p.name.endswith(OTHER_VERSION))).qcow2,
                    cold.custom_data["ssh_username"], tmp_path)  # fmt: skip
    print(f"\ntwo concurrent builds of {OTHER_VERSION} from the cached os stage: {took:.0f}s")


def _mtime(path: Path) -> int | None:
    return path.stat().st_mtime_ns if path.exists() else None


def _ours(pattern: bytes, since: set[int]) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and int(entry.name) not in since:
            try:
                cmd = (entry / "cmdline").read_bytes()
            except OSError:
                continue
            if pattern in cmd:
                found.append(int(entry.name))
    return found


def test_interrupted_stage_leaves_no_cache_entry(built_image, tmp_path):
    cache_dir = config.load("debian-12", repo_root=REPO).path("cache_dir")
    before = {int(p.name) for p in Path("/proc").iterdir() if p.name.isdigit()}
    out = tmp_path / "out"
    # a new os stage, provisioned in a build VM (the VM runner: the chroot runner has its own test)
    changed = ["--var", "extra_packages=jq", "--var", "provisioner=vm"]
    cfg = config.load("debian-12", overrides={"extra_packages": "jq", "provisioner": "vm"}, repo_root=REPO)
    sid = build.plan_ids(cfg, RUNTIME)["os"].id
    log = tmp_path / "log"
    argv = [str(REPO / ".venv" / "bin" / "kiln"), "build", "debian-12", *changed, *_flags(out)]
    interrupt_build(argv, log, "Waiting for SSH", signal.SIGINT, wait=600, poll=2, settle=5)
    time.sleep(1)
    assert stages.lookup(cache_dir, sid) is None
    assert not list(stages.root(cache_dir).glob(f".{sid}.tmp-*")), "no half-made stage"
    leftovers = [p for p in out.iterdir() if p.name != "logs"] if out.exists() else []
    assert not leftovers, leftovers
    assert (
        not _ours(b"qemu-system", before) and not _ours(b"packer", before) and not _ours(b"ansible", before)
    )


def _suite_entry(log: str, cache_dir: Path, stage: str) -> Path:
    found = re.search(rf"{stage}: (?:cached as|reusing) stage ([0-9a-f]{{12}})", log)
    if found is None:
        pytest.skip(
            f"the suite image's build log names no {stage} stage (KILN_TEST_BUILD_DIR of another kind)"
        )
    (entry,) = stages.root(cache_dir).glob(f"{found.group(1)}*")
    return entry


def test_the_suite_images_trees_go_with_the_base_disk_they_were_made_for(built_image):
    """A packed tree has no backing disk, but finalize puts it on its base disk's boot code: each tree's
    record names that base and its digest, so a base made again (pruned, damaged, a new GRUB upload on the
    mirror) is not paired with trees made for the old one, and the base goes with the trees built on it."""
    log = (built_image.path / "build.log").read_text()
    cache_dir = config.load("debian-12", repo_root=REPO).path("cache_dir")
    records = [
        r for r in (stages.inspect(cache_dir, e.name)[0] for e in stages.root(cache_dir).iterdir()) if r
    ]
    for stage in ("os", "kubernetes"):
        entry = _suite_entry(log, cache_dir, stage)
        record = stages.lookup(cache_dir, entry.name)
        assert record is not None, entry
        base = Path(record.parent_disk)
        assert base.parent.parent == cache_dir / stages.BASE_ROOT and base.is_file(), record
        assert record.parent_digest and record.parent_digest == stages.recorded_digest(base)
        assert record.id in {r.id for r in stages.built_on(cache_dir, base, records)}


def _main_archive_magic(initrd: bytes) -> bytes:
    """The first bytes of an initrd's compressed archive, after any uncompressed newc archives before it
    (early microcode; trixie's compressed modules) and the zero padding after each."""
    at = 0
    while initrd[at : at + 6] == b"070701":
        _, at = read_newc(initrd, at)
        while initrd[at : at + 1] == b"\0":
            at += 1
    return initrd[at : at + 4]


def test_the_images_initrd_is_compressed_as_its_initramfs_conf_says(built_image):
    """initramfs.conf says COMPRESS=zstd, and mkinitramfs falls back to gzip without the zstd program, which
    initramfs-tools only recommends: Debian 12's initrd was then 36 MB instead of 30 (6 MB more for a netboot
    client to fetch; about 0.5 s of a boot under TCG). The base has zstd, so the initrd it makes (the image's:
    no stage rebuilds it) is zstd, and the image lists the package."""
    log = (built_image.path / "build.log").read_text()
    cache_dir = REPO / os.path.expanduser(built_image.dir.config["cache_dir"])  # the one it was built with
    record = stages.lookup(cache_dir, _suite_entry(log, cache_dir, "os").name)
    assert record is not None
    initrd = Path(record.parent_disk).parent / "initrd.img"  # the base tree's /boot/initrd.img-VERSION
    assert _main_archive_magic(initrd.read_bytes()) == b"\x28\xb5\x2f\xfd", f"{initrd}: not zstd"
    assert "zstd" in (compare.packages(built_image.dir) or {})


def test_a_damaged_stage_is_named_by_a_dry_run_and_removed_by_cache_check(built_image, tmp_path):
    """The suite image's cache entries, hard-linked into a cache of the test's own, with one byte of the
    kubernetes stage's packed tree changed (in a copy: the suite's cache keeps its bytes). A dry run of the
    suite's build names the damage and would make the stage again, removing nothing; `kiln cache check
    --dry-run` exits 1 naming it; `kiln cache check` removes it and keeps the rest; the dry run then would
    just build the stage. (A build that finds a damaged entry and makes it again:
    test_another_kubernetes_version_reuses_the_os_stage_concurrently.)"""
    suite_cache = config.load("debian-12", repo_root=REPO).path("cache_dir")
    log = (built_image.path / "build.log").read_text()
    cache = tmp_path / "cache"
    stages.root(cache).mkdir(parents=True)
    base = re.search(r"base: (?:reusing cached base disk|cached as) (\S+)", log)
    if base is None:
        pytest.skip(
            "the suite image's build log names no bootstrap base (KILN_TEST_BUILD_DIR of another kind)"
        )
    (cache / stages.BASE_ROOT).mkdir()  # the suite's own base alone, without its lock files
    subprocess.run(["cp", "-al", base.group(1), str(cache / stages.BASE_ROOT)], check=True)
    entries = {stage: _suite_entry(log, suite_cache, stage) for stage in ("os", "kubernetes")}
    for entry in entries.values():
        subprocess.run(["cp", "-al", str(entry), str(stages.root(cache))], check=True)
    sid = entries["kubernetes"].name
    tree = stages.root(cache) / sid / stages.TREE
    data = bytearray(tree.read_bytes())
    data[len(data) // 2] ^= 0xFF
    tree.unlink()  # a new file in place of the link
    tree.write_bytes(bytes(data))
    del data

    def make() -> subprocess.CompletedProcess[str]:
        flags = f"-var output_dir={tmp_path / 'out'} -var cache_dir={cache} --dry-run"
        argv = ["make", "--no-print-directory", "build-qemu-debian-12", "K8S_STANDIN=1", SITE_MAKE_VAR,
                f"PACKER_FLAGS={flags}", "FORMATS=qcow2"]  # fmt: skip
        return subprocess.run(argv, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)

    def cache_check(*more: str) -> subprocess.CompletedProcess[str]:
        argv = [str(REPO / ".venv/bin/kiln"), *more, "cache", "check", "--var", f"cache_dir={cache}"]
        return subprocess.run(argv, cwd=REPO, capture_output=True, text=True)

    dry = make()
    assert dry.returncode == 0, dry.stdout[-3000:]
    assert f"would reuse stage {entries['os'].name[:12]}" in dry.stdout, dry.stdout[-3000:]
    damaged = f"would build again the damaged ({tree}: not the bytes stored (sha256 "
    assert damaged in dry.stdout, dry.stdout[-3000:]
    looked = cache_check("--dry-run")
    assert looked.returncode == 1, looked.stdout + looked.stderr
    assert f"{sid[:12]} (stage): {tree}: not the bytes stored (sha256 " in looked.stdout, looked.stdout
    assert "cache entries: 2 whole, 1 damaged (nothing removed: --dry-run)" in looked.stdout, looked.stdout
    assert tree.is_file(), "a dry run removes nothing"
    fixed = cache_check()
    assert fixed.returncode == 0 and "cache entries: 2 whole, 1 damaged\n" in fixed.stdout, fixed.stdout
    assert not tree.parent.exists() and (stages.root(cache) / entries["os"].name).is_dir()
    again = make()
    assert f"would build stage {sid[:12]}" in again.stdout, again.stdout[-3000:]
    assert "in the cache is damaged" not in again.stdout and "the damaged" not in again.stdout
    suite = stages.lookup(suite_cache, sid)
    assert suite is not None and cachecheck.record_damage(suite_cache, suite) is None, "the suite's is whole"
