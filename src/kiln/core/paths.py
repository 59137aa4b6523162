"""Where kiln's data lives: the one root finder.

kiln's data (config/, packer/, goss/, ansible/, cloudinit/, bootstrap/) is found in one of two places:
- a checkout: the directory above `src/` (an editable install, or `python -m kiln` from the tree);
- an installed wheel: `kiln/data/`, which the wheel build copies from the checkout's folders.

The caller passes the `KILN_REPO_ROOT` override it read from the environment (only the CLI and config
loading read the environment).
"""

from __future__ import annotations

from pathlib import Path

from kiln.core.errors import InputError

_PACKAGE = Path(__file__).resolve().parents[1]
CHECKOUT = _PACKAGE.parents[1]
PACKAGE_DATA = _PACKAGE / "data"
# the folders a data root holds; the wheel build copies exactly these (setup.py)
DATA_DIRS = ("config", "packer", "goss", "ansible", "cloudinit", "bootstrap")


def is_data_root(path: Path) -> bool:
    return (path / "config").is_dir() and (path / "packer" / "templates").is_dir()


def is_checkout(path: Path) -> bool:
    """A kiln checkout (writable project tree) rather than the read-only data of an installed wheel."""
    return is_data_root(path) and (path / "pyproject.toml").is_file()


def find_root(override: str | None = None) -> Path:
    """The data root: the override (KILN_REPO_ROOT), else the checkout kiln runs from, else the wheel's."""
    if override:
        root = Path(override).resolve()
        if not is_data_root(root):
            raise InputError(f"{root}: KILN_REPO_ROOT is not a kiln tree (no config/ and packer/templates/)")
        return root
    for root in (CHECKOUT, PACKAGE_DATA):
        if is_data_root(root):
            return root
    raise InputError(
        f"{_PACKAGE}: kiln's data is missing (neither a checkout nor {PACKAGE_DATA})",
        hint="reinstall kiln from a wheel built with `pip wheel .`, or run it from a checkout",
    )


def work_root(data_root: Path, cwd: Path) -> Path:
    """Where relative locations (output_dir, cache_dir, ...) resolve: the checkout, or for an installed
    wheel (whose data is read-only package data) the current directory."""
    return data_root if is_checkout(data_root) else cwd


def commit() -> str:
    """The commit kiln runs from: a checkout's HEAD (short, "+dirty" when the tree has changes), else the
    one the wheel build recorded in kiln/data/COMMIT, else "" (a source tree without git)."""
    import subprocess

    def git(*args: str) -> str:
        argv = ["git", "-c", f"safe.directory={CHECKOUT}", "-C", str(CHECKOUT), *args]
        done = subprocess.run(argv, capture_output=True, text=True, timeout=5)
        done.check_returncode()
        return done.stdout.strip()

    if (CHECKOUT / ".git").exists():
        try:
            head = git("rev-parse", "--short=12", "HEAD")
            return head + ("+dirty" if git("status", "--porcelain", "--untracked-files=no") else "")
        except (OSError, subprocess.SubprocessError):
            pass
    try:
        return (PACKAGE_DATA / "COMMIT").read_text().strip()
    except OSError:
        return ""


def source_date_epoch(root: Path) -> int:
    """The default time a reproducible image's timestamps are clamped to: the commit time of the kiln
    checkout (HEAD), else the newest mtime of kiln's input files under `root` (config, ansible, goss,
    packer, bootstrap)."""
    import subprocess

    if (CHECKOUT / ".git").exists():
        try:
            done = subprocess.run(
                ["git", "-c", f"safe.directory={CHECKOUT}", "-C", str(CHECKOUT), "log", "-1", "--format=%ct"],
                capture_output=True, text=True, timeout=5,
            )  # fmt: skip
            if done.returncode == 0 and done.stdout.strip().isdigit():
                return int(done.stdout.strip())
        except (OSError, subprocess.SubprocessError):
            pass
    newest = 0.0
    for sub in ("config", "ansible", "goss", "packer", "bootstrap"):
        for path in (root / sub).rglob("*"):
            try:
                newest = max(newest, path.lstat().st_mtime)
            except OSError:
                continue
    return int(newest)
