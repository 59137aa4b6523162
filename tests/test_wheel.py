"""kiln installed from its wheel works anywhere: the wheel carries the templates, OS configs, goss specs,
Ansible roles and cloud-init templates as package data, so a fresh virtualenv's `kiln` can list, config,
render and goss render from a directory outside the checkout (no KILN_REPO_ROOT, no checkout on the path)."""

from __future__ import annotations

import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fresh venv with kiln's wheel (built from this checkout) and its dependencies installed."""
    work = tmp_path_factory.mktemp("wheel")
    pip = [sys.executable, "-m", "pip"]
    subprocess.run([*pip, "wheel", "-q", "--no-deps", "-w", str(work / "dist"), str(REPO)], check=True)
    (wheel,) = (work / "dist").glob("kiln-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    shipped = ("config/debian-12.json", "packer/templates/node.pkr.hcl.j2", "goss/goss.yaml",
               "ansible/playbook.yml", "cloudinit/templates/user-data.j2", "bootstrap/grub.cfg")  # fmt: skip
    for data in shipped:
        assert f"kiln/data/{data}" in names, f"{wheel.name} lacks {data}"
    assert not [n for n in names if "packer/output" in n or ".rendered" in n], "build outputs in the wheel"
    venv = work / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    # kiln from its wheel alone; its dependencies from this checkout's venv through a .pth file (a pip
    # install of all of them took two minutes of the CI budget). The next test checks that the wheel's
    # declared requirements are what that venv holds.
    subprocess.run([str(venv / "bin" / "pip"), "install", "-q", "--no-deps", str(wheel)], check=True)
    site = next((venv / "lib").glob("python3*/site-packages"))
    deps = [p for p in sys.path if p.endswith("site-packages") and Path(p).is_dir()]
    (site / "kiln-test-deps.pth").write_text("\n".join(deps) + "\n")
    return venv


def _kiln(venv: Path, cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {
        k: v for k, v in os.environ.items() if k not in ("KILN_REPO_ROOT", "PACKER_VAR_FILES", "PYTHONPATH")
    }
    return subprocess.run(
        [str(venv / "bin" / "kiln"), *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=300
    )


def test_the_installed_wheel_lists_configs_renders_and_renders_goss_from_anywhere(
    installed: Path, tmp_path: Path
) -> None:
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    where = _kiln(installed, elsewhere, "--version")
    assert where.returncode == 0, where.stderr
    # the wheel's kiln, not this checkout's
    origin = subprocess.run(
        [str(installed / "bin" / "python"), "-c", "import kiln; print(kiln.__file__)"],
        cwd=elsewhere, capture_output=True, text=True, check=True,
    )  # fmt: skip
    assert str(REPO) not in origin.stdout and str(installed) in origin.stdout

    listed = _kiln(installed, elsewhere, "list")
    assert listed.returncode == 0, listed.stderr
    assert "debian-12" in listed.stdout and "ubuntu-2204" in listed.stdout

    shown = _kiln(installed, elsewhere, "config", "debian-12")
    assert shown.returncode == 0, shown.stderr
    assert "kubernetes_semver" in shown.stdout and "bootstrap" in shown.stdout

    out = elsewhere / "rendered"
    rendered = _kiln(installed, elsewhere, "render", "debian-12", "-o", str(out))
    assert rendered.returncode == 0, rendered.stderr
    assert 'source "qemu" "node"' in (out / "node.pkr.hcl").read_text()

    goss = _kiln(installed, elsewhere, "goss", "render", "--target", "debian-12", "--phase", "final")
    assert goss.returncode == 0, goss.stderr
    assert "containerd" in goss.stdout and "kernel-param" in goss.stdout
    # nothing was written but what was asked for: the render and its placeholder credentials beside it
    assert sorted(p.name for p in elsewhere.iterdir()) == [".rendered.context", "rendered"]


def test_the_wheels_declared_requirements_are_met_by_what_it_runs_with(installed: Path) -> None:
    """Every Requires-Dist of the wheel (no extra) is installed in a version it accepts."""
    code = (
        "import importlib.metadata as m\n"
        "from packaging.requirements import Requirement\n"
        "bad = []\n"
        "for line in m.requires('kiln') or []:\n"
        "    r = Requirement(line)\n"
        "    if r.marker is not None and not r.marker.evaluate({'extra': ''}):\n"
        "        continue\n"
        "    try:\n"
        "        v = m.version(r.name)\n"
        "    except m.PackageNotFoundError:\n"
        "        bad.append(f'{r}: not installed'); continue\n"
        "    if not r.specifier.contains(v, prereleases=True):\n"
        "        bad.append(f'{r}: {v}')\n"
        "print(len(m.requires('kiln') or []))\n"
        "assert not bad, bad\n"
    )
    done = subprocess.run([str(installed / "bin" / "python"), "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert int(done.stdout) >= 5  # jinja2, python-hcl2, google-cloud-storage, paramiko, ...
