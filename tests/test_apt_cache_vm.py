"""A real package cache, and one package more, on real builds of the suite's inputs.

apt-cacher-ng (Debian's package) runs on the build host for the module, with a config of its own (no
mirror remapping: requests go to the host asked for). debian-12 is built twice through it (`apt_cache`,
with `extra_packages: tree`), each from an empty stage cache of its own (the base disk hard-linked in), so
that each os stage downloads every package: the first through a cold cache, the second through a warm one:
- the second build's packages come from the cache: counted in the cache's own log (`O` lines served
  without an `I` line fetched), its os stage timed against the first's;
- the finished image keeps no cache or proxy setting for apt;
- `kiln diff` between the suite image and the first build names `tree`, its files and its dpkg records,
  and nothing else in the root;
- a build whose cache is stopped fails at once, before any stage, and says so (also with
  disable_public_repos, which the site settings turn on).

The two builds take about 10 minutes: `make test-apt-cache` runs them; `make test` runs the last check."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from conftest import SITE_MAKE_VAR, SITE_VAR_FILES
from kiln import config
from kiln.build import pipeline as build

REPO = Path(__file__).resolve().parents[1]
NAME = "debian-12+kube-v1.36.1"
ACNG = "/usr/sbin/apt-cacher-ng"
LOGIN_SECRET = "s3cret-of-the-proxy"
pytestmark = [
    pytest.mark.vm,
    pytest.mark.skipif(os.geteuid() != 0, reason="the chroot runner needs root"),
    pytest.mark.skipif(not Path(ACNG).exists(), reason="apt-cacher-ng (make deps) is not installed"),
]


def _free_port() -> int:
    """A free port below 32768: apt-cacher-ng 3.7.4 cannot bind one above ("Error resolving address for
    binding"), and the kernel hands out ephemeral ports from 32768 up."""
    import random

    for port in random.sample(range(20000, 32000), 200):
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise AssertionError("no free port below 32768")


@dataclass
class Cache:
    port: int
    log: Path
    proc: subprocess.Popen

    @property
    def url(self) -> str:
        return f"http://10.0.2.2:{self.port}"  # the build host as a QEMU guest sees it (a chroot too)

    @property
    def url_with_login(self) -> str:  # as a site's authenticating proxy is given (apt-cacher-ng ignores it)
        return f"http://kiln:{LOGIN_SECRET}@10.0.2.2:{self.port}"

    def lines(self, since: float) -> list[list[str]]:
        if not self.log.is_file():
            return []
        rows = [line.split("|") for line in self.log.read_text().splitlines()]
        return [r for r in rows if len(r) >= 5 and r[0].isdigit() and int(r[0]) >= int(since)]


@pytest.fixture(scope="module")
def cache(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cache]:
    root = tmp_path_factory.mktemp("apt-cacher-ng")
    port = _free_port()
    conf = root / "conf"
    conf.mkdir()
    (conf / "acng.conf").write_text(
        f"CacheDir: {root / 'cache'}\nLogDir: {root / 'log'}\nPort: {port}\nBindAddress: 127.0.0.1\n"
        f"SupportDir: /usr/lib/apt-cacher-ng\nPidFile: {root / 'pid'}\nSocketPath: {root / 'sock'}\n"
        "ForeGround: 1\nUnbufferLogs: 1\n"
    )
    proc = subprocess.Popen([ACNG, "-c", str(conf)], stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 20
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            break
        except OSError:
            assert proc.poll() is None and time.monotonic() < deadline, "apt-cacher-ng did not start"
            time.sleep(0.2)
    yield Cache(port, root / "log" / "apt-cacher.log", proc)
    proc.terminate()
    proc.wait(timeout=20)


def _build(out: Path, cache: Cache, *extra: str, url: str = "") -> subprocess.CompletedProcess:
    accel = os.environ.get("KILN_TEST_ACCELERATOR", "tcg")
    flags = (f"-var output_dir={out} -var accelerator={accel} -var apt_cache={url or cache.url} "
             f"-var extra_packages=tree --no-verify " + " ".join(extra))  # fmt: skip
    return subprocess.run(
        ["make", "--no-print-directory", "build-qemu-debian-12", "K8S_STANDIN=1", SITE_MAKE_VAR,
         f"PACKER_FLAGS={flags}", "FORMATS=qcow2"],
        cwd=REPO, capture_output=True, text=True,
    )  # fmt: skip


def _os_seconds(build_dir: Path) -> float:
    for line in (build_dir / "build.log").read_text().splitlines():
        if "kiln: stage os: ok in " in line:
            took = line.rsplit("ok in ", 1)[1]
            assert "reused" not in took, f"{build_dir}: the os stage came from the stage cache: {line}"
            return float(took.rstrip("s"))
    raise AssertionError(f"{build_dir}/build.log: no os stage ran")


@dataclass
class Builds:
    first: Path
    second: Path
    second_started: float


def _fresh_cache(root: Path) -> Path:
    """An empty stage cache but the suite's base disk (hard links, no copy): the os stage runs for real."""
    cfg = config.load("debian-12", var_files=SITE_VAR_FILES, repo_root=REPO)
    spec = build.base_spec(cfg)
    assert spec is not None
    (root / "bootstrap").mkdir(parents=True)
    shutil.copytree(cfg.path("cache_dir") / "bootstrap" / spec.key(), root / "bootstrap" / spec.key(),
                    copy_function=os.link)  # fmt: skip
    return root


@pytest.fixture(scope="module")
def builds(built_image, cache: Cache, tmp_path_factory: pytest.TempPathFactory) -> Builds:  # type: ignore[no-untyped-def]
    root = tmp_path_factory.mktemp("apt-cache-builds")
    # both builds from an empty stage cache: the first fills the package cache, the second reads it
    first = _build(root / "first", cache, f"-var cache_dir={_fresh_cache(root / 'cache-1')}")
    assert first.returncode == 0, first.stdout[-4000:] + first.stderr[-2000:]
    started = time.time()
    second = _build(root / "second", cache, f"-var cache_dir={_fresh_cache(root / 'cache-2')}",
                    url=cache.url_with_login)  # fmt: skip
    assert second.returncode == 0, second.stdout[-4000:] + second.stderr[-2000:]
    return Builds(root / "first" / NAME, root / "second" / NAME, started)


@pytest.mark.apt_cache
def test_the_second_builds_packages_come_from_the_cache(builds: Builds, cache: Cache) -> None:
    rows = [r for r in cache.lines(builds.second_started) if r[4].endswith(".deb")]
    served = {r[4] for r in rows if r[1] == "O"}
    fetched = {r[4] for r in rows if r[1] == "I"}
    hits = served - fetched
    cold, warm = _os_seconds(builds.first), _os_seconds(builds.second)
    print(f"\napt cache: second build: {len(served)} packages served, {len(hits)} from the cache, "
          f"{len(fetched)} fetched; os stage {cold:.0f}s (cold cache), {warm:.0f}s (warm)")  # fmt: skip
    assert len(served) >= 10, rows[:20]
    assert len(hits) >= 0.9 * len(served), sorted(fetched)
    assert any("/tree_" in path for path in hits)


@pytest.mark.apt_cache
def test_the_caches_login_is_used_and_not_written_down(builds: Builds) -> None:
    """The second build went through the cache with a login in its URL (its packages came from the cache,
    above); nothing in its build directory, the log, config.json, the provenance and the SBOM included,
    holds the password."""
    holding = [p.name for p in builds.second.rglob("*") if p.is_file() and p.suffix != ".qcow2"
               and LOGIN_SECRET.encode() in p.read_bytes()]  # fmt: skip
    assert not holding
    assert "http://***@10.0.2.2:" in (builds.second / "config.json").read_text()


@pytest.mark.apt_cache
def test_the_image_keeps_no_package_cache_setting(builds: Builds) -> None:
    listing = (builds.first / f"{NAME}.files.jsonl").read_text()
    assert "/etc/apt/apt.conf.d/90kiln-proxy" not in listing


@pytest.mark.apt_cache
def test_kiln_diff_names_the_one_extra_package_and_its_files(built_image, builds: Builds) -> None:  # type: ignore[no-untyped-def]
    if not (built_image.path / f"{NAME}.files.jsonl").is_file():
        pytest.skip("the suite image predates file manifests")
    assert "\ntree\t" not in "\n" + (built_image.path / f"{NAME}.packages").read_text()
    diff = subprocess.run(
        [str(REPO / ".venv/bin/kiln"), "diff", str(built_image.path), str(builds.first), "--json"],
        capture_output=True, text=True,
    )  # fmt: skip
    assert diff.returncode == 1, diff.stdout[-2000:] + diff.stderr
    result = json.loads(diff.stdout)
    packages = result["packages"]
    assert list(packages["added"]) == ["tree"] and not packages["removed"] and not packages["changed"]
    files = result["files"]
    print("\nfiles added:", files["added"], "\nchanged:", files["changed"])
    assert "/usr/bin/tree" in files["added"] and not files["removed"]
    records = ("/var/lib/dpkg/", "/var/log/", "/var/cache/", "/etc/ld.so.cache")
    strays = [
        p for p in [*files["added"], *files["changed"]] if "tree" not in p and not p.startswith(records)
    ]
    assert not strays, strays  # the package's own paths and its dpkg records, nothing else
    assert set(result["config"]) == {"extra_packages", "formats"}, result["config"]
    assert "apt_cache" in result["config_where"]  # where it was built: shown, not counted


def test_a_stopped_cache_fails_the_build_at_once(tmp_path: Path) -> None:
    started = time.monotonic()
    out = tmp_path / "out"
    done = subprocess.run(
        [str(REPO / ".venv/bin/kiln"), "build", "debian-12", "--var", f"output_dir={out}",
         "--var", f"apt_cache=http://10.0.2.2:{_free_port()}",
         *[a for f in SITE_VAR_FILES for a in ("--var-file", str(f))]],
        cwd=REPO, capture_output=True, text=True,
    )  # fmt: skip
    took = time.monotonic() - started
    assert done.returncode == 1, done.stdout + done.stderr
    assert "apt_cache http://10.0.2.2:" in done.stderr and "connection refused" in done.stderr, done.stderr
    assert "disable_public_repos is on" in done.stderr
    assert took < 60, f"took {took:.0f}s"
    assert not out.exists() or [p.name for p in out.iterdir()] in ([], ["logs"])
