"""Stage IDs (what invalidates what), the stage cache (atomic, locked, pruned LRU-first without breaking
backing chains), and the finalize path for a VMware-format output (a VMDK made by qemu-img, plus a VMX)."""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import subprocess
import threading
import time
from pathlib import Path

import pytest

from kiln import config
from kiln.build import cachecheck, finalize, stages
from kiln.build import pipeline as build
from kiln.build.render import Output
from kiln.build.workspace import Workspace
from kiln.core import builddir, digests, inputs
from kiln.core.errors import BuildError, InputError
from kiln.core.progress import Null
from kiln.core.runtime import Runtime
from kiln.goss import reports
from kiln.goss.specs import Result
from kiln.vm import boot
from kiln_runtime import RUNTIME

REPO = Path(__file__).resolve().parents[1]


def ids(**overrides: str) -> dict[str, str]:
    cfg = config.load("debian-12", overrides=overrides, repo_root=REPO)
    return {k: v.id for k, v in build.plan_ids(cfg, RUNTIME).items()}


def test_kubernetes_version_change_keeps_base_and_os() -> None:
    a, b = ids(), ids(kubernetes_semver="v1.31.4")
    assert a["base"] == b["base"] and a["os"] == b["os"]
    assert a["kubernetes"] != b["kubernetes"] and a["finalize"] != b["finalize"]


def test_extra_packages_change_rebuilds_from_os() -> None:
    a, b = ids(), ids(extra_packages="jq")
    assert a["base"] == b["base"] and a["os"] != b["os"] and a["kubernetes"] != b["kubernetes"]


def test_where_bytes_come_from_changes_nothing() -> None:
    a = ids()
    for key, value in (
        ("bootstrap_mirror", "http://mirror.example/debian"),
        ("apt_mirror", "http://mirror.example/debian"),
        ("http_proxy", "http://proxy.example:3128"),
        ("output_dir", "/tmp/elsewhere"),
        ("accelerator", "tcg"),
    ):
        assert ids(**{key: value}) == a, key
    sums = {"kubelet": "a" * 64, "kubeadm": "b" * 64, "kubectl": "c" * 64}
    http = {"kubernetes_source_type": "http", "kubernetes_http_sha256": json.dumps(sums)}
    one = ids(**http, kubernetes_http_source="http://10.0.2.2:1111")
    two = ids(**http, kubernetes_http_source="http://10.0.2.2:2222")
    assert one == two, "the stand-in server's port is not an input"
    assert one["kubernetes"] != a["kubernetes"] and one["os"] == a["os"]


def test_what_lands_in_the_image_changes_the_id() -> None:
    a = ids()
    assert ids(cpus="4")["finalize"] != a["finalize"] and ids(cpus="4")["kubernetes"] == a["kubernetes"]
    assert ids(disk_size="30000")["base"] != a["base"]
    assert ids(containerd_source_type="http", containerd_url="https://x.example/c.tgz",
               containerd_sha256="d" * 64)["os"] != a["os"]  # fmt: skip


def test_versioned_sums_pick_the_builds_own() -> None:
    sums = {
        f"{v}/{n}": h * 64
        for v, h in (("v1.30.2", "a"), ("v1.31.0", "b"))
        for n in ("kubelet", "kubeadm", "kubectl")
    }
    base = {
        "kubernetes_source_type": "http",
        "kubernetes_http_source": "http://h",
        "kubernetes_http_sha256": json.dumps(sums),
    }
    cfg = config.load("debian-12", overrides={**base, "kubernetes_semver": "v1.31.0"}, repo_root=REPO)
    assert dict(cfg["kubernetes_http_sha256"]) == {
        "kubelet": "b" * 64,
        "kubeadm": "b" * 64,
        "kubectl": "b" * 64,
    }
    only = {k: v for k, v in sums.items() if k.startswith("v1.31.0/")}
    alone = config.load(
        "debian-12",
        overrides={**base, "kubernetes_http_sha256": json.dumps(only), "kubernetes_semver": "v1.31.0"},
        repo_root=REPO,
    )
    assert build.input_hash(cfg, RUNTIME) == build.input_hash(alone, RUNTIME)


def test_role_files_are_inputs(tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    repo.mkdir()
    for d in ("config", "packer", "ansible"):
        subprocess.run(["cp", "-r", str(REPO / d), str(repo / d)], check=True)
    cfg = config.load("debian-12", repo_root=repo)
    before = build.plan_ids(cfg, RUNTIME)
    (repo / "ansible/roles/kubernetes/tasks/main.yml").write_text(
        (repo / "ansible/roles/kubernetes/tasks/main.yml").read_text() + "\n# changed\n"
    )
    after = build.plan_ids(cfg, RUNTIME)
    assert before["os"].id == after["os"].id and before["kubernetes"].id != after["kubernetes"].id
    (repo / "ansible/roles/node/tasks/main.yml").write_text("---\n")
    assert build.plan_ids(cfg, RUNTIME)["os"].id != before["os"].id


# --- the cache ---------------------------------------------------------------------------------------------


def qcow2(path: Path, backing: Path | None = None) -> Path:
    argv = ["qemu-img", "create", "-q", "-f", "qcow2"]
    if backing is not None:
        argv += ["-F", "qcow2", "-b", str(backing)]
    subprocess.run([*argv, str(path), "64M"], check=True)
    return path


def record(
    sid: str, stage: str, parent: str = "", parent_disk: str = "", used: float | None = None
) -> stages.Record:
    now = time.time() if used is None else used
    return stages.Record(sid, stage, parent, "debian-12", parent_disk, 0, now, now, {})


def test_store_is_atomic_and_lookup_sees_only_finished(tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    (stages.root(cache)).mkdir(parents=True)
    (stages.root(cache) / ".abc.tmp-x").mkdir()  # an interrupted stage: never taken for finished
    assert stages.lookup(cache, "abc") is None and stages.entries(cache) == []
    disk = stages.store(cache, "abc", qcow2(tmp_path / "d.qcow2"), record("abc", "os"))
    assert disk == stages.root(cache) / "abc" / "disk.qcow2" and not (tmp_path / "d.qcow2").exists()
    found = stages.lookup(cache, "abc")
    assert found is not None and found.size > 0
    (stages.root(cache) / "abc" / "record.json").write_text("{broken")
    assert stages.lookup(cache, "abc") is None


def test_a_stage_whose_parent_disk_is_gone_is_a_miss(tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    parent = qcow2(tmp_path / "parent.qcow2")
    stages.store(cache, "k", qcow2(tmp_path / "k.qcow2", parent), record("k", "kubernetes", "o", str(parent)))
    assert stages.lookup(cache, "k") is not None
    parent.unlink()
    assert stages.lookup(cache, "k") is None


def test_prune_lru_first_with_descendants_and_never_a_held_stage(tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    old = time.time() - 10 * 86400
    os_disk = stages.store(cache, "os1", qcow2(tmp_path / "a.qcow2"), record("os1", "os", used=old))
    stages.store(
        cache, "k1", qcow2(tmp_path / "b.qcow2", os_disk), record("k1", "kubernetes", "os1", str(os_disk))
    )
    stages.store(cache, "os2", qcow2(tmp_path / "c.qcow2"), record("os2", "os", used=old))
    held = threading.Event()
    release = threading.Event()

    def hold() -> None:
        with stages.locked(cache, "os2"):
            held.set()
            release.wait(10)

    t = threading.Thread(target=hold)
    t.start()
    assert held.wait(30)
    try:
        removed = stages.prune(cache, older_than_days=5)
    finally:
        release.set()
        t.join()
    assert sorted(r.id for r in removed) == ["k1", "os1"], "os1 goes with the stage built on it"
    assert [r.id for r in stages.entries(cache)] == ["os2"], "a held stage is never deleted"
    assert stages.prune(cache, max_size=0)[0].id == "os2"
    with pytest.raises(InputError):
        stages.prune(cache)


def test_cache_ls_and_prune_cover_the_bootstrap_base(tmp_path: Path) -> None:
    """The bootstrap base disks are cache entries too: listed as stage "base", and pruned together with the
    stages whose disks they back (never while a build holds the base's lock)."""
    import fcntl

    cache = tmp_path / "cache"
    base_dir = cache / "bootstrap" / "basekey1"
    base_dir.mkdir(parents=True)
    base_disk = qcow2(base_dir / "base.qcow2")
    (base_dir / "info.json").write_text(json.dumps({"suite": "bookworm"}))
    old = time.time() - 30 * 86400
    os.utime(base_dir / "info.json", (old, old))
    os_disk = stages.store(
        cache, "os1", qcow2(tmp_path / "a.qcow2", base_disk), record("os1", "os", "b", str(base_disk), old)
    )
    stages.store(
        cache, "k1", qcow2(tmp_path / "b.qcow2", os_disk), record("k1", "kubernetes", "os1", str(os_disk))
    )
    listed = {r.id: r for r in stages.entries(cache)}
    assert set(listed) == {"basekey1", "os1", "k1"} and listed["basekey1"].stage == "base"
    assert listed["basekey1"].size > 0 and listed["basekey1"].target == "bootstrap bookworm"

    with open(cache / "bootstrap" / "basekey1.lock", "w") as lock:  # a build is making the base
        fcntl.flock(lock, fcntl.LOCK_EX)
        assert [r.id for r in stages.prune(cache, max_size=0) if r.stage == "base"] == [], "held: kept"
    assert base_dir.is_dir()
    os2 = record("os2", "os", "b", str(base_disk))
    stages.store(cache, "os2", qcow2(tmp_path / "c.qcow2", base_disk), os2)
    removed = stages.prune(cache, older_than_days=20)
    assert sorted(r.id for r in removed) == ["basekey1", "os2"], "the base goes with the stage it backs"
    assert not base_dir.exists() and stages.entries(cache) == []


def test_a_damaged_entry_is_named_and_removed_with_what_its_disk_backs(tmp_path: Path) -> None:
    """Every file of an entry is stored with its sha256; a file that is not those bytes (truncated, a byte
    changed, gone) is named with what is wrong, and the entry goes with the stages built on its disk."""
    cache = tmp_path / "cache"
    packages = tmp_path / "p.txt"
    packages.write_text("bash 5.2\n")
    os_disk = stages.store(
        cache, "os1", qcow2(tmp_path / "a.qcow2"), record("os1", "os"), {"packages.txt": packages}
    )
    k1 = record("k1", "kubernetes", "os1", str(os_disk))
    stages.store(cache, "k1", qcow2(tmp_path / "b.qcow2", os_disk), k1)
    os1 = stages.lookup(cache, "os1")
    assert os1 is not None and set(os1.digests) == {"disk.qcow2", "packages.txt"}
    assert os1.digests["disk.qcow2"] == builddir.sha256_file(os_disk)
    assert cachecheck.record_damage(cache, os1) is None

    kept = os_disk.read_bytes()
    with open(os_disk, "r+b") as f:  # one byte changed, same size
        f.seek(100)
        f.write(bytes([kept[100] ^ 0xFF]))
    assert f"{os_disk}: not the bytes stored (sha256 " in (cachecheck.record_damage(cache, os1) or "")
    os_disk.write_bytes(kept[:1000])
    assert (cachecheck.record_damage(cache, os1) or "").endswith("; 1000 bytes)")
    os_disk.write_bytes(kept)
    assert cachecheck.record_damage(cache, os1) is None
    (os_disk.parent / "packages.txt").unlink()
    assert cachecheck.record_damage(cache, os1) == f"{os_disk.parent / 'packages.txt'}: missing"
    old = dataclasses.replace(os1, digests={})  # stored before digests: only its disk must be there
    assert cachecheck.record_damage(cache, old) is None
    os_disk.unlink()
    assert cachecheck.record_damage(cache, old) == f"{os_disk}: missing"
    os_disk.write_bytes(kept)

    assert cachecheck.evict(cache, os_disk.parent, os_disk) == 1, "k1's disk is backed by os1's"
    assert stages.entries(cache) == [] and list(stages.root(cache).iterdir()) == [], "no temp dir left"


def test_a_damaged_base_disk_is_named_and_removed_with_the_overlays_on_it(tmp_path: Path) -> None:
    """A base disk's info.json keeps its files' digests (kiln.build.bootstrap, kiln.build.cloudimg): a
    damaged base is named, and goes with the VM runner's overlays that its disk backs."""
    cache = tmp_path / "cache"
    entry = cache / stages.BASE_ROOT / "basekey1"
    entry.mkdir(parents=True)
    disk = qcow2(entry / stages.BASE_DISK)
    (entry / "vmlinuz").write_bytes(b"kernel")
    info = {"suite": "bookworm", "digests": digests.file_digests(entry, [stages.BASE_DISK, "vmlinuz"])}
    (entry / "info.json").write_text(json.dumps(info))
    stages.store(cache, "os1", qcow2(tmp_path / "a.qcow2", disk), record("os1", "os", "b", str(disk)))
    stages.store(cache, "os2", qcow2(tmp_path / "b.qcow2"), record("os2", "os"))  # not on this base
    assert cachecheck.base_check(entry) == (info, None)
    bare = {k: v for k, v in info.items() if k != "digests"}  # cached before digests: given them on reuse
    assert cachecheck.keep_digests(entry, bare) == {**bare, "digests": info["digests"]}
    assert json.loads((entry / "info.json").read_text())["digests"] == info["digests"]
    (entry / "vmlinuz").write_bytes(b"kernel!")
    assert (cachecheck.base_check(entry)[1] or "").startswith(f"{entry / 'vmlinuz'}: not the bytes stored")
    assert cachecheck.evict_base(cache, "basekey1") == "removed with the stage built on it"
    assert not entry.exists() and [r.id for r in stages.entries(cache)] == ["os2"]
    assert list((cache / stages.BASE_ROOT).iterdir()) == [], "no temp dir left"


def test_a_build_makes_a_damaged_stage_again(tmp_path: Path) -> None:
    """stage_cached checks the entry it would reuse: a damaged one is removed, and the stage runs again (its
    runner here a stand-in that writes a disk; the real one is tests/test_chroot_vm.py's)."""
    where = {"output_dir": str(tmp_path / "out"), "cache_dir": str(tmp_path / "cache")}
    cfg = config.load("debian-12", overrides=where, repo_root=REPO)
    runs: list[str] = []

    class Runner:
        def run(self, ws: Workspace, stage: str, parent: Path | None, last: bool) -> Output:
            runs.append(stage)
            return Output(qcow2(tmp_path / f"made-{len(runs)}.qcow2"), "qcow2", False)

    temp = tmp_path / "temp"
    temp.mkdir()
    lines: list[str] = []
    with open(temp / "build.log", "a") as log:
        ws = Workspace(
            cfg, RUNTIME, Null(), cfg.artifact_name, temp, tmp_path / "work", temp / "build.log", log,
            "tcg", "qemu", build.plan_ids(cfg, RUNTIME),
        )  # fmt: skip
        ws.monitor.log = lambda stage, text: lines.append(text)  # type: ignore[method-assign]
        with ws.holds:
            first = build.stage_cached(ws, "os", None, False, Runner())  # type: ignore[arg-type]
            assert build.stage_cached(ws, "os", None, False, Runner()) == first  # type: ignore[arg-type]
            assert runs == ["os"] and "reusing stage" in lines[-1]
            # a VM runner's kubernetes overlay on the os disk, held by another build (its use lock)
            k1 = record("k1", "kubernetes", ws.ids["os"].id, str(first))
            stages.store(cfg.path("cache_dir"), "k1", qcow2(tmp_path / "k1.qcow2", first), k1)
            stages.hold_shared(stages.use_lock(cfg.path("cache_dir"), "kubernetes", "k1"), ws.holds)
            first.write_bytes(first.read_bytes()[:512])
            dry = dataclasses.replace(ws, runtime=dataclasses.replace(RUNTIME, dry_run=True), remade=set())
            build.stage_cached(dry, "os", None, False, Runner())  # type: ignore[arg-type]
            assert runs == ["os", "os"] and stages.lookup(cfg.path("cache_dir"), "k1") is not None
            assert f"would build again the damaged ({first}: not the bytes stored" in lines[-1]
            assert dry.remade == {str(first)}, "its overlays are made again too (in the same dry run)"
            again = build.stage_cached(ws, "os", None, False, Runner())  # type: ignore[arg-type]
            assert stages.lookup(cfg.path("cache_dir"), "k1") is None, "never again on a disk made again"
            assert not (stages.root(cfg.path("cache_dir")) / "k1").exists()
            # an entry a lookup refuses (its disk gone; its record unreadable) is replaced, not run into
            first.unlink()
            assert build.stage_cached(ws, "os", None, False, Runner()) == first  # type: ignore[arg-type]
            (first.parent / stages.RECORD).write_text('{"id": "half')
            assert build.stage_cached(ws, "os", None, False, Runner()) == first  # type: ignore[arg-type]
            # a key a later kiln adds to the record is left out, not refused, and kept; a record stored
            # before digests is given them when the entry is reused
            data = json.loads((first.parent / stages.RECORD).read_text())
            old = {k: v for k, v in data.items() if k != "digests"}
            (first.parent / stages.RECORD).write_text(json.dumps({**old, "later": 1}))
            assert build.stage_cached(ws, "os", None, False, Runner()) == first  # type: ignore[arg-type]
            now = json.loads((first.parent / stages.RECORD).read_text())
            assert now["later"] == 1 and now["digests"] == {"disk.qcow2": builddir.sha256_file(first)}
            # a VM runner's overlay records its parent disk's digest, read before its stage runs
            k = build.stage_cached(ws, "kubernetes", first, True, Runner())  # type: ignore[arg-type]
            k_record = stages.lookup(cfg.path("cache_dir"), ws.ids["kubernetes"].id)
            assert k_record is not None and k_record.parent_digest == builddir.sha256_file(first), k

            class Replacing(Runner):  # the parent made again (another build found it damaged) meanwhile
                def run(self, ws: Workspace, stage: str, parent: Path | None, last: bool) -> Output:
                    made = super().run(ws, stage, parent, last)
                    parent_record = stages.lookup(ws.cfg.path("cache_dir"), ws.ids["os"].id)
                    assert parent_record is not None
                    stages.touch(ws.cfg.path("cache_dir"), parent_record, kept={"disk.qcow2": "0" * 64})
                    return made

            cachecheck.evict_stage(cfg.path("cache_dir"), ws.ids["kubernetes"].id)
            with pytest.raises(BuildError, match=r"made again while the kubernetes stage ran on it"):
                build.stage_cached(ws, "kubernetes", first, True, Replacing())  # type: ignore[arg-type]
            assert stages.lookup(cfg.path("cache_dir"), ws.ids["kubernetes"].id) is None, "not stored"
    assert runs == ["os"] * 5 + ["kubernetes"] * 2 and again == first and first.stat().st_size > 512
    damaged = [line for line in lines if "in the cache is damaged" in line]
    assert len(damaged) == 3 and damaged[0].startswith(
        f"os: stage {ws.ids['os'].short} in the cache is damaged ({first}: not the bytes stored (sha256 "
    )
    assert damaged[0].endswith("; 512 bytes)): removed with the stage built on it; building it again")
    assert f"({first.parent}: neither disk.qcow2 nor tree.tar.zst): removed; building" in damaged[1]
    assert f"({first.parent / stages.RECORD}: missing or unreadable): removed; building" in damaged[2]
    assert "reusing stage" in [line for line in lines if line.startswith("os:")][-1]


def test_cache_check_removes_what_is_damaged_and_keeps_what_is_whole(tmp_path: Path, capsys) -> None:
    """`kiln cache check`: a whole stage kept; a damaged stage removed with the overlay on it; a damaged
    base removed with its overlay; an entry with no disk removed; --dry-run names them, removes nothing and
    exits 1; an entry a build is making is left alone."""
    import fcntl

    from kiln import cli

    cache = tmp_path / "cache"
    base = cache / stages.BASE_ROOT / "basekey1"
    base.mkdir(parents=True)
    base_disk = qcow2(base / stages.BASE_DISK)
    (base / "info.json").write_text(json.dumps({"digests": digests.file_digests(base, [stages.BASE_DISK])}))
    on_base = stages.store(
        cache, "osb", qcow2(tmp_path / "b.qcow2", base_disk), record("osb", "os", "b", str(base_disk))
    )
    whole = stages.store(cache, "os1", qcow2(tmp_path / "w.qcow2"), record("os1", "os"))
    bad = stages.store(cache, "os2", qcow2(tmp_path / "x.qcow2"), record("os2", "os"))
    stages.store(cache, "k2", qcow2(tmp_path / "k.qcow2", bad), record("k2", "kubernetes", "os2", str(bad)))
    stages.store(cache, "os3", qcow2(tmp_path / "y.qcow2"), record("os3", "os"))
    (stages.root(cache) / "os3" / stages.DISK).unlink()
    making = stages.store(cache, "os4", qcow2(tmp_path / "z.qcow2"), record("os4", "os"))
    for damaged in (bad, base_disk, making):
        with open(damaged, "ab") as f:
            f.write(b"x")
    argv = ["cache", "check", "--var", f"cache_dir={cache}"]
    (stages.root(cache) / ".locks").mkdir()
    with open(stages.root(cache) / ".locks" / "os4.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # a build is making os4 again
        locks_before = sorted(p.name for p in (stages.root(cache) / ".locks").iterdir())
        assert cli.main(["--dry-run", *argv]) == 1
        dry = capsys.readouterr().out
        assert sorted(p.name for p in (stages.root(cache) / ".locks").iterdir()) == locks_before
        assert not list((cache / stages.BASE_ROOT).glob("*.lock")), "a dry run writes no lock file"
        assert all(p.exists() for p in (bad, base_disk, on_base, making)), "a dry run removes nothing"
        assert cli.main(argv) == 0
        out = capsys.readouterr().out
    for text, verb in ((dry, "would be removed"), (out, "removed")):
        assert f"os2 (stage): {bad}: not the bytes stored (sha256 " in text, text
        os3 = stages.root(cache) / "os3"
        assert f"os3 (stage): {os3}: neither disk.qcow2 nor tree.tar.zst: {verb}\n" in text, text
        assert f"basekey1 (base): {base_disk}: not the bytes stored (sha256 " in text, text
        # os1 only: k2 and osb go with the disks they stand on, os4 is being made
        assert "cache entries: 1 whole, 3 damaged, 1 not checked (a build is making them)" in text, text
    assert "bytes): would be removed\n" in dry and "(nothing removed: --dry-run)" in dry
    assert out.count("bytes): removed with the stage built on it\n") == 2, out  # k2 on os2, osb on the base
    assert whole.is_file() and making.is_file()
    assert not bad.exists() and not base.exists() and not on_base.exists()
    assert cli.main(argv) == 0 and "cache entries: 1 whole, 1 damaged" in capsys.readouterr().out  # os4 now
    assert cli.main(argv) == 0 and capsys.readouterr().out == "cache entries: 1 whole, 0 damaged\n"


def test_an_overlay_on_a_disk_made_again_is_not_reused(tmp_path: Path) -> None:
    """A VM runner's overlay records the digest its parent disk's entry kept when it was built on it. When
    the parent is made again while the overlay stays (an interrupted removal, an overlay stored while its
    parent was replaced, a cache whose stages outlived its base), the overlay is not reused on the new
    bytes. A record keeps what a later kiln wrote into it, and what another build added meanwhile."""
    cache = tmp_path / "cache"
    os_disk = stages.store(cache, "os1", qcow2(tmp_path / "a.qcow2"), record("os1", "os"))
    k1 = record("k1", "kubernetes", "os1", str(os_disk))
    k1.parent_digest = stages.recorded_digest(os_disk)
    assert k1.parent_digest == builddir.sha256_file(os_disk)
    stages.store(cache, "k1", qcow2(tmp_path / "b.qcow2", os_disk), k1)
    assert stages.lookup(cache, "k1") is not None
    shutil.rmtree(os_disk.parent)  # the parent alone removed, and made again: other bytes
    again = tmp_path / "c.qcow2"
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(again), "128M"], check=True)
    stages.store(cache, "os1", again, record("os1", "os"))
    assert stages.lookup(cache, "k1") is None
    assert stages.inspect(cache, "k1")[1] == f"{os_disk}: the disk it stands on was made again since"
    assert cachecheck.check(cache, "k1")[1] == f"{os_disk}: the disk it stands on was made again since"

    entry = stages.root(cache) / "os1"
    data = json.loads((entry / stages.RECORD).read_text())
    (entry / stages.RECORD).write_text(json.dumps({**data, "later": {"kept": True}}))
    os1 = stages.lookup(cache, "os1")
    assert os1 is not None
    stages.touch(cache, os1, size=10, kept={"live-base-x.squashfs": "ab" * 32})
    after = json.loads((entry / stages.RECORD).read_text())
    assert after["later"] == {"kept": True} and after["size"] == data["size"] + 10
    assert after["digests"] == {**data["digests"], "live-base-x.squashfs": "ab" * 32}
    (entry / stages.RECORD).write_text(json.dumps({**data, "digests": {"disk.qcow2": 5}}))
    assert stages.lookup(cache, "os1") is None, "a record whose digests are not strings is unreadable"


def test_lock_makes_the_second_builder_wait_then_reuse(tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    made: list[str] = []

    def builder(name: str) -> None:
        with stages.locked(cache, "same"):
            if stages.lookup(cache, "same") is None:
                time.sleep(0.3)
                stages.store(cache, "same", qcow2(tmp_path / f"{name}.qcow2"), record("same", "os"))
                made.append(name)

    threads = [threading.Thread(target=builder, args=(n,)) for n in ("a", "b")]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(made) == 1 and len(stages.entries(cache)) == 1


def test_parse_size() -> None:
    assert stages.parse_size("20G") == 20 << 30 and stages.parse_size("500M") == 500 << 20
    assert stages.parse_size("1024") == 1024 and stages.parse_size("2GiB") == 2 << 30
    with pytest.raises(InputError):
        stages.parse_size("lots")


# --- finalize on a VMware-format output --------------------------------------------------------------------


def test_finalize_takes_a_vmware_output_dir_to_an_ova(tmp_path: Path) -> None:
    """The vmware-iso path: post-processing takes the disk render says the builder writes (a VMDK in the
    builder's own output directory, beside a VMX), and ends in the OVA (and a qcow2)."""
    cfg = config.load("ubuntu-2204", overrides={"output_dir": str(tmp_path / "out")}, repo_root=REPO)
    vmware_dir = tmp_path / "work" / "all" / "packer-output-vmware"
    vmware_dir.mkdir(parents=True)
    subprocess.run(["qemu-img", "create", "-q", "-f", "vmdk", "-o", "subformat=monolithicSparse",
                    str(vmware_dir / "disk.vmdk"), "64M"], check=True)  # fmt: skip
    (vmware_dir / f"{cfg.artifact_name}.vmx").write_text(
        '.encoding = "UTF-8"\nscsi0:0.fileName = "disk.vmdk"\n'
    )
    temp = tmp_path / "temp"
    temp.mkdir()
    with open(temp / "build.log", "a") as log:
        ws = Workspace(
            cfg, RUNTIME, Null(), cfg.artifact_name, temp, tmp_path / "work", temp / "build.log", log,
            "tcg", "vmware-iso", build.plan_ids(cfg, RUNTIME),
        )  # fmt: skip
        finalize.finalize_disk(ws, Output(vmware_dir / "disk.vmdk", "vmdk", False))
    bd = builddir.BuildDir.open(temp)
    assert bd.ova.is_file() and bd.qcow2.is_file()
    assert (temp / f"{bd.name}.ova.sha256").read_text() == builddir.sha256_file(bd.ova)
    assert bd.custom_data["input_hash"] == build.input_hash(cfg, RUNTIME)
    assert not (tmp_path / "work").exists(), "keys and seeds go before publish"


def _finalize_ws(tmp_path: Path, target: str, builder: str, log: object) -> Workspace:
    cfg = config.load(target, overrides={"output_dir": str(tmp_path / "out")}, repo_root=REPO)
    temp = tmp_path / "temp"
    return Workspace(
        cfg, RUNTIME, Null(), cfg.artifact_name, temp, tmp_path / "work", temp / "build.log", log,  # type: ignore[arg-type]
        "tcg", builder, build.plan_ids(cfg, RUNTIME),
    )  # fmt: skip


@pytest.mark.parametrize("fmt", ["raw", "qcow2-compressed", "vmdk"])
def test_finalize_boots_once_while_the_compressions_run(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fmt: str
) -> None:
    """The verify boot runs once, before the manifest, on the disk the qcow2 is compressed from while it is
    (a raw disk made from a tree); on the qcow2 (Packer compressed it); after it, on the qcow2, for a
    VMware VMDK. The record it reads is the one the manifest then holds."""
    (tmp_path / "temp").mkdir()
    disk = tmp_path / "work" / "disk"
    disk.parent.mkdir()
    qemu_fmt = {"raw": "raw", "qcow2-compressed": "qcow2", "vmdk": "vmdk"}[fmt]
    subprocess.run(["qemu-img", "create", "-q", "-f", qemu_fmt, str(disk), "64M"], check=True)
    booted: list[tuple[Path, bool, dict[str, object]]] = []

    def fake_verify(build: builddir.BuildDir, *, disk: Path, **kwargs: object) -> list[Result]:
        """The boot, without QEMU: what finalize hands it (the record it builds, the disk)."""
        booted.append((disk, (build.path / builddir.MANIFEST).exists(), build.values()))
        return []

    monkeypatch.setattr("kiln.goss.verify.verify_build", fake_verify)
    yielded: list[int] = []
    monkeypatch.setattr("kiln.core.proc.yield_cpu", yielded.append)
    target, builder = ("ubuntu-2204", "vmware-iso") if fmt == "vmdk" else ("debian-12", "qemu")
    with open(tmp_path / "temp" / "build.log", "a") as log:
        ws = _finalize_ws(tmp_path, target, builder, log)
        finalize.finalize_disk(ws, Output(disk, qemu_fmt, fmt == "qcow2-compressed"), verify=True)
    bd = builddir.BuildDir.open(ws.temp)
    assert len(booted) == 1
    # the qcow2's compression beside the boot yields the CPU to it; Packer's qcow2 needs none, and a VMDK's
    # runs before its boot, with nothing to give way to (the OVA's VMDK is the qcow2's clusters, after it)
    assert len(yielded) == {"raw": 1, "qcow2-compressed": 0, "vmdk": 0}[fmt]
    path, manifest_then, values = booted[0]
    assert path == {"raw": disk, "qcow2-compressed": ws.temp / f"{ws.name}.qcow2", "vmdk": bd.qcow2}[fmt]
    assert not manifest_then, "the boot comes before the manifest"
    opened = bd.values()
    assert {k: v for k, v in values.items() if not k.startswith("build_")} == {
        k: v for k, v in opened.items() if not k.startswith("build_")
    }, "the record in hand is the one written (but for the build's date, taken again)"
    assert bd.ova.is_file() and bd.qcow2.is_file()


def test_without_the_boot_the_compression_does_not_yield(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A build without verify (--no-verify): nothing boots beside the qcow2's compression, so it keeps its
    share of the CPU (on a busy host, yielding would starve it while the build waits for it)."""
    (tmp_path / "temp").mkdir()
    disk = tmp_path / "work" / "disk"
    disk.parent.mkdir()
    subprocess.run(["qemu-img", "create", "-q", "-f", "raw", str(disk), "64M"], check=True)
    yielded: list[int] = []
    monkeypatch.setattr("kiln.core.proc.yield_cpu", yielded.append)

    def no_boot(*args: object, **kwargs: object) -> list[Result]:
        raise AssertionError("a build without verify booted")

    monkeypatch.setattr("kiln.goss.verify.verify_build", no_boot)
    with open(tmp_path / "temp" / "build.log", "a") as log:
        ws = _finalize_ws(tmp_path, "debian-12", "qemu", log)
        finalize.finalize_disk(ws, Output(disk, "raw", False), verify=False)
    assert builddir.BuildDir.open(ws.temp).ova.is_file()
    assert yielded == []


def _raw_with_data(path: Path) -> Path:
    """A 64 MiB raw disk with 8 MiB of text: a qcow2 of a few hundred compressed clusters."""
    subprocess.run(["qemu-img", "create", "-q", "-f", "raw", str(path), "64M"], check=True)
    with open(path, "r+b") as fh:
        fh.write(b"".join(b"line %d of a file on the disk\n" % i for i in range(300000))[: 8 << 20])
    return path


def _disk_to_finalize(tmp_path: Path, fmt: str) -> tuple[Path, Output]:
    """The raw disk with data, and what finalize gets: that disk, or (`qcow2-compressed`) a qcow2 Packer
    compressed from it."""
    raw = _raw_with_data(tmp_path / "disk.raw")
    if fmt == "raw":
        return raw, Output(raw, "raw", False)
    disk = tmp_path / "packer" / "disk.qcow2"
    disk.parent.mkdir()
    subprocess.run(["qemu-img", "convert", "-c", "-O", "qcow2", str(raw), str(disk)], check=True)
    return raw, Output(disk, "qcow2", True)


@pytest.mark.parametrize("fmt", ["raw", "qcow2-compressed"])
def test_the_ova_is_written_from_the_qcow2_beside_the_boot(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fmt: str
) -> None:
    """The OVA is made while the boot still runs, once the qcow2 is done (kiln's, or Packer's), from the
    qcow2's clusters (the disk compressed once); the boot waits here until it is there."""
    (tmp_path / "temp").mkdir()
    raw, disk = _disk_to_finalize(tmp_path, fmt)
    seen: list[bool] = []

    def slow_boot(ws: Workspace, path: Path) -> None:
        ova_path = ws.temp / f"{ws.name}.ova"
        deadline = time.monotonic() + 60
        while not ova_path.exists() and time.monotonic() < deadline:
            time.sleep(0.1)
        seen.append(ova_path.exists())

    monkeypatch.setattr(finalize, "verify_disk", slow_boot)
    with open(tmp_path / "temp" / "build.log", "a") as log:
        ws = _finalize_ws(tmp_path, "debian-12", "qemu", log)
        finalize.finalize_disk(ws, disk, verify=True)
    assert seen == [True], "the OVA was not written while the boot ran"
    bd = builddir.BuildDir.open(ws.temp)
    vmdk_path = boot.extract_vmdk(bd.ova, tmp_path / "x")
    subprocess.run(["qemu-img", "compare", "-q", str(raw), str(vmdk_path)], check=True)
    grains = vmdk_path.read_bytes()[128 * 512 :]
    qcow2 = bd.qcow2.read_bytes()
    first = grains[12 : 12 + int.from_bytes(grains[8:12], "little")]
    assert first[2:-4] in qcow2, "the grain is not the qcow2's deflate stream"


@pytest.mark.parametrize("fmt", ["raw", "qcow2-compressed"])
def test_an_ova_that_failed_during_a_failed_boot_is_the_error_shown(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fmt: str
) -> None:
    """The OVA beside the boot failed (a full disk, say) and the boot then failed too, maybe because of it:
    the OVA's error is the one shown."""
    from kiln.core.errors import VerifyError

    (tmp_path / "temp").mkdir()
    disk = _disk_to_finalize(tmp_path, fmt)[1]

    def full_disk(*args: object, **kwargs: object) -> Path:
        raise BuildError("/out: no space left on device")

    def failing_boot(ws: Workspace, path: Path) -> None:
        time.sleep(3)  # the OVA has failed by now
        raise VerifyError("3 of 80 goss checks failed")

    monkeypatch.setattr(finalize.ova, "build_ova", full_disk)
    monkeypatch.setattr(finalize, "verify_disk", failing_boot)
    with open(tmp_path / "temp" / "build.log", "a") as log:
        ws = _finalize_ws(tmp_path, "debian-12", "qemu", log)
        with pytest.raises(BuildError, match="no space left"):
            finalize.finalize_disk(ws, disk, verify=True)
    assert not (ws.temp / builddir.MANIFEST).exists()


def test_a_failed_boot_stops_the_ova_being_written_beside_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The boot fails while the OVA's VMDK is half written beside it: the VMDK stops at its next grain, and
    the boot's error is the one shown; no OVA, no temporary directory."""
    from kiln.artifacts import vmdk
    from kiln.core.errors import VerifyError

    (tmp_path / "temp").mkdir()
    disk = _raw_with_data(tmp_path / "disk.raw")
    writing = threading.Event()
    real_grains = vmdk._grains

    def slow_grains(path: Path, image: object):  # type: ignore[no-untyped-def]
        for grain in real_grains(path, image):  # type: ignore[arg-type]
            writing.set()
            time.sleep(0.2)  # 128 grains: 25 s, unless stopped
            yield grain

    monkeypatch.setattr(vmdk, "_grains", slow_grains)

    def failing_boot(ws: Workspace, path: Path) -> None:
        assert writing.wait(60), "the VMDK was not being written during the boot"
        raise VerifyError("3 of 80 goss checks failed")

    monkeypatch.setattr(finalize, "verify_disk", failing_boot)
    started = time.monotonic()
    with open(tmp_path / "temp" / "build.log", "a") as log:
        ws = _finalize_ws(tmp_path, "debian-12", "qemu", log)
        with pytest.raises(VerifyError, match="3 of 80"):
            finalize.finalize_disk(ws, Output(disk, "raw", False), verify=True)
    assert time.monotonic() - started < 10
    assert not (ws.temp / f"{ws.name}.ova").exists()
    assert not list(ws.temp.glob(".ova-*"))


def test_a_compression_that_failed_during_a_failed_boot_is_the_error_shown(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A full disk can fail the qcow2's compression and the boot beside it: the compression's error is
    the one shown, not the checks the boot failed because of it."""
    from kiln.core.errors import CommandError, VerifyError

    (tmp_path / "temp").mkdir()
    disk = tmp_path / "work" / "disk.raw"
    disk.parent.mkdir()
    subprocess.run(["qemu-img", "create", "-q", "-f", "raw", str(disk), "64M"], check=True)

    def failing_boot(ws: Workspace, path: Path) -> None:
        time.sleep(2)  # the compression has failed by now
        raise VerifyError("3 of 80 goss checks failed")

    monkeypatch.setattr(finalize, "verify_disk", failing_boot)
    with open(tmp_path / "temp" / "build.log", "a") as log:
        ws = _finalize_ws(tmp_path, "debian-12", "qemu", log)
        (ws.temp / f"{ws.name}.qcow2").mkdir()  # the qcow2 cannot be written
        with pytest.raises(CommandError) as err:
            finalize.finalize_disk(ws, Output(disk, "raw", False), verify=True)
    assert "qemu-img" in str(err.value)
    assert not (ws.temp / builddir.MANIFEST).exists()


def test_vmware_iso_without_vmware_fails_at_once_naming_the_qemu_way(tmp_path: Path) -> None:
    cfg = config.load(
        "ubuntu-1804", overrides={"output_dir": str(tmp_path / "out")}, repo_root=REPO
    )  # default builder: vmware-iso
    started = time.monotonic()
    with pytest.raises(InputError) as err:
        build.run_build(cfg, runtime=Runtime(root=RUNTIME.root, env={"PATH": "/usr/bin:/bin"}))
    assert time.monotonic() - started < 10  # refused before Packer starts (a Packer run takes far longer)
    assert err.value.exit_code == 2 and "make build-qemu-ubuntu-1804" in (err.value.hint or "")
    assert not (tmp_path / "out").exists()


def test_up_to_date_needs_marker_report_hash_and_files(tmp_path: Path) -> None:
    final = tmp_path / "debian-12+kube-v1.30.2"
    final.mkdir()
    (final / "a.qcow2").write_bytes(b"x")
    builddir.write_manifest(
        final / builddir.MANIFEST, final.name, [final / "a.qcow2"],
        {"build_name": "debian-12", "kubernetes_semver": "v1.30.2", "input_hash": "H"}, "qemu",
    )  # fmt: skip
    assert not build.up_to_date(final, "H")  # no marker, no goss report
    inputs.mark(final, "test")
    (final / "goss").mkdir()
    (final / "goss" / "report.json").write_text("{}")
    assert not build.up_to_date(final, "H")  # a report that records nothing
    failed = Result("command", "c", "exit-status", successful=False, skipped=False, expected=0, found=1)
    reports.write_reports([failed], final / "goss")
    assert not build.up_to_date(final, "H")  # the last verify (`kiln verify` again) failed
    reports.write_reports([dataclasses.replace(failed, found=0, successful=True)], final / "goss")
    assert build.up_to_date(final, "H") and not build.up_to_date(final, "other")
    (final / "a.qcow2").unlink()
    assert not build.up_to_date(final, "H")


def _checkout_copy(dest: Path) -> Path:
    """The tracked files of this checkout, copied to `dest` (as a second clone would have them)."""
    import subprocess

    files = subprocess.run(["git", "ls-files", "-z"], cwd=REPO, capture_output=True, check=True).stdout
    for name in files.decode().split("\0"):
        if name and (REPO / name).is_file():
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / name, dest / name)
    return dest


def test_the_suites_stage_ids_are_the_same_from_two_checkouts(tmp_path: Path) -> None:
    """Stage IDs hash kiln's files by path relative to their root and the user's files by content: the suite's
    image (the site var file and a goss_spec_dir of the user's) has the same IDs from checkouts in two
    different directories, each run from its own tree."""
    import json
    import subprocess
    import sys

    ids = []
    for where in ("a/one", "b/elsewhere/two"):
        root = _checkout_copy(tmp_path / where)
        specs = tmp_path / where / "site-specs"  # the user's own specs, at another absolute path each time
        specs.mkdir()
        (specs / "goss.yaml").write_text("file:\n  /etc/hostname:\n    exists: true\n")
        env = {k: v for k, v in os.environ.items() if k not in ("KILN_REPO_ROOT", "PACKER_VAR_FILES")}
        env["PYTHONPATH"] = str(root / "src")
        run = subprocess.run(
            [sys.executable, "-m", "kiln", "stages", "debian-12", "--json",
             "--var-file", str(root / "tests" / "fixtures" / "site" / "node.json"),
             "--var", f"goss_spec_dir={specs}", "--var", f"output_dir={root / 'out'}"],
            cwd=root, env=env, capture_output=True, text=True, timeout=120,
        )  # fmt: skip
        assert run.returncode == 0, run.stderr
        doc = json.loads(run.stdout)
        ids.append({s["stage"]: s["id"] for s in doc["stages"]})
    assert ids[0] == ids[1]
    assert list(ids[0]) == [s.name for s in stages.STAGES]
    # and a change to one of the user's spec files is a change of the kubernetes stage (content counts)
    (tmp_path / "b/elsewhere/two/site-specs/goss.yaml").write_text("file:\n  /etc/hosts:\n    exists: true\n")
    cfg = config.load(
        "debian-12", overrides={"goss_spec_dir": str(tmp_path / "b/elsewhere/two/site-specs")}, repo_root=REPO
    )
    before = config.load(
        "debian-12", overrides={"goss_spec_dir": str(tmp_path / "a/one/site-specs")}, repo_root=REPO
    )
    a, b = build.plan_ids(before, RUNTIME), build.plan_ids(cfg, RUNTIME)
    assert a["os"].id == b["os"].id and a["kubernetes"].id != b["kubernetes"].id


def test_each_setting_feeds_the_stages_it_declares() -> None:
    """Which stage a setting feeds is declared in the settings table, not guessed from its name."""
    from kiln.config.settings import BY_NAME, SETTINGS, STAGE_NAMES

    for s in SETTINGS:
        assert s.stages and set(s.stages) <= set(STAGE_NAMES), s.name
        for stage in STAGE_NAMES:
            assert (s.name in stages.stage_settings(stage)) == (stage in s.stages and not s.location), s.name
    assert BY_NAME["kubernetes_semver"].stages == ("kubernetes",)
    assert BY_NAME["disk_size"].stages == ("base", "finalize")
    assert BY_NAME["apt_mirror"].location and "apt_mirror" not in stages.stage_settings("os")


def test_a_setting_newer_than_the_cached_stages_keeps_their_ids_at_its_default(tmp_path: Path) -> None:
    """bootstrap_network came after stages were cached: at ifupdown, the stack every earlier base had, a
    target's stage IDs are the ones it had without the setting; networkd is another base, other IDs."""
    from kiln.config.settings import SETTINGS

    root = tmp_path / "root"
    root.mkdir()
    without = stages.stage_ids({"bootstrap_suite": "trixie"}, root, tmp_path, ())
    ifupdown = stages.stage_ids(
        {"bootstrap_suite": "trixie", "bootstrap_network": "ifupdown"}, root, tmp_path, ()
    )
    networkd = stages.stage_ids(
        {"bootstrap_suite": "trixie", "bootstrap_network": "networkd"}, root, tmp_path, ()
    )
    assert {k: v.id for k, v in ifupdown.items()} == {k: v.id for k, v in without.items()}
    assert "bootstrap_network" not in ifupdown["base"].inputs["settings"]
    assert networkd["base"].inputs["settings"]["bootstrap_network"] == "networkd"
    assert networkd["base"].id != ifupdown["base"].id and networkd["os"].id != ifupdown["os"].id
    assert [s.name for s in SETTINGS if s.new_in_ids] == ["bootstrap_network"]


def test_a_role_named_by_name_is_hashed_by_its_content(tmp_path: Path) -> None:
    """extra_roles_before/after name roles as Ansible finds them (ansible/roles/NAME): editing such a role
    is a change of the stage that runs it, though its name stays the same."""
    root = tmp_path / "root"
    tasks = root / "ansible" / "roles" / "site_role" / "tasks"
    tasks.mkdir(parents=True)
    (tasks / "main.yml").write_text("- ansible.builtin.debug: {msg: a}\n")
    values = {"extra_roles_before": ["site_role"], "extra_roles_after": ["missing_role"]}
    a = stages.stage_ids(values, root, tmp_path, ())
    (tasks / "main.yml").write_text("- ansible.builtin.debug: {msg: b}\n")
    b = stages.stage_ids(values, root, tmp_path, ())
    assert a["base"].id == b["base"].id and a["os"].id != b["os"].id
    # a role kiln cannot find (Ansible may, in a collection): the build warns that it is no input
    (tmp_path / "by_path").mkdir()
    values["extra_roles_after"] = ["missing_role", "by_path"]
    assert stages.unfound_roles(values, root, tmp_path, ()) == [("extra_roles_after", "missing_role")]


def test_a_role_found_through_ansible_roles_path_is_hashed(tmp_path: Path, monkeypatch) -> None:
    """A role Ansible finds through the operator's ANSIBLE_ROLES_PATH (which passes on to it) is an input of
    the stage that runs it, found where Ansible finds it: editing it rebuilds the stage, the same role in
    another folder gives the same ID, and a relative entry means the folder kiln was started in."""
    import dataclasses

    from kiln.config.environ import default_runtime

    def role(where: Path, msg: str) -> Path:
        (where / "site_after" / "tasks").mkdir(parents=True, exist_ok=True)
        (where / "site_after" / "tasks" / "main.yml").write_text(f"- ansible.builtin.debug: {{msg: {msg}}}\n")
        return where

    first, second = role(tmp_path / "a" / "roles", "one"), role(tmp_path / "b" / "roles", "one")
    monkeypatch.chdir(tmp_path / "a")
    monkeypatch.setenv("ANSIBLE_ROLES_PATH", f"{tmp_path / 'none'}:roles")
    rt = default_runtime()
    assert rt.env["ANSIBLE_ROLES_PATH"] == f"{tmp_path / 'none'}:{first}", "made absolute once, at start"
    assert rt.roles_path == (tmp_path / "none", first)
    cfg = config.load("debian-12", overrides={"extra_roles_after": ["site_after"]}, repo_root=REPO)
    before = build.plan_ids(cfg, rt)
    assert stages.unfound_roles(cfg.plain(), cfg.repo_root, cfg.work_root, rt.roles_path) == []
    role(first, "two")
    after = build.plan_ids(cfg, rt)
    assert before["os"].id == after["os"].id and before["kubernetes"].id != after["kubernetes"].id
    elsewhere = dataclasses.replace(rt, env={**rt.env, "ANSIBLE_ROLES_PATH": str(second)})
    assert build.plan_ids(cfg, elsewhere)["kubernetes"].id == before["kubernetes"].id, "by content, not place"
    # Ansible is given the role kiln hashed: a name it finds the same way stays a name
    assert stages.roles_for_ansible(cfg.plain(), cfg.repo_root, cfg.work_root, rt.roles_path) == {
        "extra_roles_before": [], "extra_roles_after": ["site_after"],
    }  # fmt: skip
    unset = dataclasses.replace(rt, env={k: v for k, v in rt.env.items() if k != "ANSIBLE_ROLES_PATH"})
    assert stages.unfound_roles(cfg.plain(), cfg.repo_root, cfg.work_root, unset.roles_path) == [
        ("extra_roles_after", "site_after")
    ]


def test_prune_never_deletes_an_entry_a_running_build_stands_on(tmp_path: Path) -> None:
    """A build holds a shared use lock on the base and the stages its disk is backed by until it ends;
    prune skips them (and what they back) while it runs, and frees them after."""
    import contextlib

    cache = tmp_path / "cache"
    old = time.time() - 30 * 86400
    os_disk = stages.store(cache, "os1", qcow2(tmp_path / "a.qcow2"), record("os1", "os", used=old))
    k1 = record("k1", "kubernetes", "os1", str(os_disk))
    stages.store(cache, "k1", qcow2(tmp_path / "b.qcow2", os_disk), k1)
    with contextlib.ExitStack() as holds:
        stages.hold_shared(stages.use_lock(cache, "kubernetes", "k1"), holds)
        stages.hold_shared(stages.use_lock(cache, "kubernetes", "k1"), holds)  # a second build, same stage
        assert stages.prune(cache, older_than_days=1) == [], "k1 is in use, so is os1 beneath it"
    assert sorted(r.id for r in stages.prune(cache, older_than_days=1)) == ["k1", "os1"]


def test_ansible_is_given_the_role_kiln_hashed(tmp_path: Path) -> None:
    """A role named by a path relative to the work root is the role kiln hashes; Ansible would look for that
    path from its own working directory (Packer's render dir), so it is given the absolute path. Names,
    absolute paths and roles kiln cannot find go to Ansible as written."""
    root, work = tmp_path / "root", tmp_path / "work"
    (root / "ansible" / "roles" / "by_name" / "tasks").mkdir(parents=True)
    (work / "site" / "roles" / "mine" / "tasks").mkdir(parents=True)
    values = {"extra_roles_before": ["by_name", "site/roles/mine"],
              "extra_roles_after": [str(work / "site" / "roles" / "mine"), "missing/role"]}  # fmt: skip
    assert stages.roles_for_ansible(values, root, work, ()) == {
        "extra_roles_before": ["by_name", str(work / "site" / "roles" / "mine")],
        "extra_roles_after": [str(work / "site" / "roles" / "mine"), "missing/role"],
    }
