"""The wheel carries kiln's data: the folders users edit in a checkout (config/, packer/, goss/, ansible/,
cloudinit/, bootstrap/) are copied into the package as kiln/data/, where kiln.core.paths finds them when
kiln runs from an installed wheel. Everything else is in pyproject.toml."""

import subprocess
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

ROOT = Path(__file__).resolve().parent
# the same folders as kiln.core.paths.DATA_DIRS (setup.py cannot import the package it builds)
DATA_DIRS = ("config", "packer", "goss", "ansible", "cloudinit", "bootstrap")
# what a checkout holds there that is output, not data
SKIP = {"packer/output", "packer/.rendered", "cloudinit/cidata.iso"}


class BuildPyWithData(build_py):
    def run(self) -> None:
        super().run()
        if getattr(self, "editable_mode", False):
            return  # an editable install reads the checkout itself
        target = Path(self.build_lib) / "kiln" / "data"
        for folder in DATA_DIRS:
            for path in sorted((ROOT / folder).rglob("*")):
                rel = path.relative_to(ROOT)
                if not path.is_file() or any(str(rel).startswith(s) for s in SKIP) or "__pycache__" in rel.parts:
                    continue
                out = target / rel
                out.parent.mkdir(parents=True, exist_ok=True)
                self.copy_file(str(path), str(out))
        # the commit `kiln --version` shows for an installed wheel (a checkout asks git itself)
        head = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short=12", "HEAD"], capture_output=True, text=True)
        (target / "COMMIT").write_text(head.stdout.strip() + "\n" if head.returncode == 0 else "unknown\n")


setup(cmdclass={"build_py": BuildPyWithData})
