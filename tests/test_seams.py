"""The seams: each wing imports only the wings below it, no cycles, no module over 600 lines, one required
runtime; only cli and config read the environment; a dry-run build writes nothing; progress comes out as
JSON lines for CI systems."""

from __future__ import annotations

import ast
import hashlib
import json
import os
import re
import subprocess
import sys
from pathlib import Path

from kiln.build import stages
from kiln.core import progress

REPO = Path(__file__).resolve().parents[1]
SRC = REPO / "src" / "kiln"

# Each wing and the wings it may import (besides itself). The order is the flow: a wing imports only wings
# to its left. `kiln` (the package root) holds __version__ only.
WINGS: dict[str, set[str]] = {
    "core": set(),
    "config": {"core"},
    "artifacts": {"core", "config"},
    "vm": {"core", "config", "artifacts"},
    "goss": {"core", "config", "vm"},
    "build": {"core", "config", "artifacts", "vm", "goss"},
    "publish": {"core", "config", "artifacts", "build"},  # artifacts: the layout and provenance it publishes
    "cli": {"core", "config", "artifacts", "vm", "goss", "build", "publish"},
}
MAX_LINES = 600


def modules() -> dict[str, Path]:
    """Dotted name below kiln (`vm.qemu`, `config`, `cli.build`) -> file."""
    out: dict[str, Path] = {}
    for path in sorted(SRC.rglob("*.py")):
        parts = path.relative_to(SRC).with_suffix("").parts
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts) or "kiln"] = path
    return out


def _resolve(module: str, level: int, package: str) -> str:
    if level == 0:
        return module
    base = package.split(".")[: len(package.split(".")) - (level - 1)]
    return ".".join([*base, module] if module else base)


def import_graph() -> dict[str, set[str]]:
    """module -> the kiln modules it imports (at any level: lazy imports inside functions count too)."""
    mods = modules()
    graph: dict[str, set[str]] = {}
    for name, path in mods.items():
        package = "kiln." + name if path.name == "__init__.py" else "kiln." + name.rpartition(".")[0]
        package = package.rstrip(".")
        deps: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text())):
            targets: list[str] = []
            if isinstance(node, ast.ImportFrom):
                base = _resolve(node.module or "", node.level, package)
                targets = [base] + [f"{base}.{alias.name}" for alias in node.names]
            elif isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            for target in targets:
                if target.startswith("kiln."):
                    short = target[len("kiln.") :]
                    if short in mods:
                        deps.add(short)
        graph[name] = deps - {name}
    return graph


def wing(module: str) -> str:
    return module.split(".")[0]


def test_every_module_is_in_a_wing() -> None:
    stray = sorted(m for m in modules() if wing(m) not in WINGS and m not in ("kiln", "__main__"))
    assert not stray, f"modules outside the wings {sorted(WINGS)}: {stray}"


def test_each_wing_imports_only_the_wings_below_it() -> None:
    offenders = []
    for module, deps in import_graph().items():
        if module in ("kiln", "__main__"):
            continue
        allowed = WINGS[wing(module)] | {wing(module), "kiln"}
        for dep in sorted(deps):
            if wing(dep) not in allowed:
                offenders.append(f"{module} imports {dep}")
    assert not offenders, "imports against the wing order:\n" + "\n".join(offenders)


def test_import_graph_has_no_cycles() -> None:
    graph = import_graph()
    # a package's __init__ that re-exports its modules is not a cycle with them
    graph = {m: {d for d in deps if not m.startswith(d + ".")} for m, deps in graph.items()}
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> None:
        state[node] = 1
        stack.append(node)
        for dep in sorted(graph.get(node, ())):
            if state.get(dep) == 1:
                cycle = stack[stack.index(dep) :] + [dep]
                raise AssertionError("import cycle: " + " -> ".join(cycle))
            if dep not in state:
                visit(dep)
        stack.pop()
        state[node] = 2

    for module in sorted(graph):
        if module not in state:
            visit(module)


def test_the_graph_test_sees_real_edges() -> None:
    """The checks are not vacuous: the graph has the edges the flow implies."""
    graph = import_graph()
    assert "config" in graph["build.render"] and "core.proc" in graph["build.packer"]
    assert "build.render" in graph["build.validate"] and "build.packer" in graph["build.validate"]
    assert "build.packer" not in graph["build.render"], "render must take the Packer version as an argument"
    assert "build.pipeline" in graph["publish.release"]


def test_no_module_is_over_the_line_limit() -> None:
    over = {m: n for m, p in modules().items() if (n := len(p.read_text().splitlines())) > MAX_LINES}
    assert not over, f"modules over {MAX_LINES} lines (split them by concern): {over}"


def test_each_wing_states_its_contract() -> None:
    for name in WINGS:
        init = SRC / name / "__init__.py"
        doc = ast.get_docstring(ast.parse(init.read_text()))
        assert doc and "Imports:" in doc, f"{init}: the docstring states what the wing holds and may import"


def test_runtime_is_never_optional_below_the_cli() -> None:
    """One runtime, passed down: no `runtime: Runtime | None` parameter (no silent rebuild) below the CLI."""
    pattern = re.compile(r"Runtime\s*\|\s*None|Optional\[Runtime\]|None\s*\|\s*Runtime")
    offenders = []
    for module, path in modules().items():
        if wing(module) == "cli":
            continue
        for number, line in enumerate(path.read_text().splitlines(), 1):
            if pattern.search(line):
                offenders.append(f"{path.relative_to(REPO)}:{number}: {line.strip()}")
    assert not offenders, "\n".join(offenders)


def test_only_cli_and_config_read_the_environment() -> None:
    pattern = re.compile(r"os\.environ|getenv\(|environ\[|environ\.get")
    offenders = []
    for module, path in modules().items():
        if wing(module) in ("cli", "config"):
            continue
        for number, line in enumerate(path.read_text().splitlines(), 1):
            if pattern.search(line) and not line.lstrip().startswith("#"):
                offenders.append(f"{path.relative_to(REPO)}:{number}: {line.strip()}")
    assert not offenders, "\n".join(offenders)


def test_no_module_global_dry_run() -> None:
    for path in SRC.rglob("*.py"):
        assert "DRY_RUN" not in path.read_text(), path


def tree_digest(root: Path) -> dict[str, str]:
    out: dict[str, str] = {}
    if not root.exists():
        return out
    for path in sorted(root.rglob("*")):
        st = path.lstat()
        rel = str(path.relative_to(root))
        content = hashlib.sha256(path.read_bytes()).hexdigest() if path.is_file() else ""
        out[rel] = f"{st.st_mode:o} {st.st_size} {st.st_mtime_ns} {content}"
    return out


def test_dry_run_build_prints_stages_and_commands_and_writes_nothing(tmp_path: Path) -> None:
    out = tmp_path / "out"
    cache = tmp_path / "cache"
    for d in (out, cache):
        d.mkdir()
        (d / "keep").write_text("x")
    before = (tree_digest(out), tree_digest(cache), tree_digest(REPO / "packer" / "output"))
    result = subprocess.run(
        [sys.executable, "-m", "kiln", "--dry-run", "build", "debian-12", "--var", "provisioner=vm",
         "--var", f"output_dir={out}", "--var", f"cache_dir={cache}"],
        cwd=REPO, capture_output=True, text=True, timeout=120,
        env={**os.environ, "PACKER_VAR_FILES": ""},
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    for stage in stages.STAGES:  # the stage table drives the dry run: every stage, with what it makes
        assert f"==> {stage.name}: {stage.makes}" in result.stdout
    assert "would run: " in result.stdout and "packer build" in result.stdout
    assert (tree_digest(out), tree_digest(cache), tree_digest(REPO / "packer" / "output")) == before


def test_json_lines_progress() -> None:
    import io

    buf = io.StringIO()
    mon = progress.JsonLines(buf)
    mon.begin("os", "packer build")
    mon.log("os", "[00:01] qemu.node: Waiting for SSH...")
    mon.progress("upload", 5, 10, "bytes")
    mon.end("os", 12.5, True, "cached as 3f2a9c")
    events = [json.loads(line) for line in buf.getvalue().splitlines()]
    assert [e["event"] for e in events] == ["begin", "log", "progress", "end"]
    assert events[0]["stage"] == "os" and events[3]["seconds"] == 12.5 and events[3]["ok"] is True


def test_progress_json_flag_on_a_dry_run_build(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "kiln", "--progress=json", "--dry-run", "build", "debian-12",
         "--var", f"output_dir={tmp_path}", "--var", f"cache_dir={tmp_path}"],
        cwd=REPO, capture_output=True, text=True, timeout=120,
        env={**os.environ, "PACKER_VAR_FILES": ""},
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    events = [json.loads(line) for line in result.stdout.splitlines() if line.startswith("{")]
    begins = [e["stage"] for e in events if e["event"] == "begin"]
    assert begins == [s.name for s in stages.STAGES]


def test_dry_run_reaches_every_command_that_writes(tmp_path: Path, capsys) -> None:  # type: ignore[no-untyped-def]
    """--dry-run has one carrier and every command honours it: render, cidata and cache prune say what they
    would write or delete, and the tree is the same afterwards, byte for byte and mtime for mtime."""
    import time as _time

    from kiln import cli
    from kiln.vm import ssh

    cache = tmp_path / "cache"
    disk = tmp_path / "d.qcow2"
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(disk), "1M"], check=True)
    old = _time.time() - 90 * 86400
    stages.store(cache, "os1", disk, stages.Record("os1", "os", "", "debian-12", "", 0, old, old, {}))
    (stages.root(cache) / ".stale.tmp-1").mkdir()
    key = ssh.generate_keypair(tmp_path / "key")
    before = tree_digest(tmp_path)
    out = tmp_path / "rendered"
    assert cli.main(["--dry-run", "render", "debian-12", "-o", str(out)]) == 0
    seed = ["--dry-run", "cidata", "--ssh-public-key", str(key.public_key), "-o", str(tmp_path / "s.iso")]
    assert cli.main(seed) == 0
    assert cli.main(["--dry-run", "cache", "prune", "--older-than", "1", "--var", f"cache_dir={cache}"]) == 0
    printed = capsys.readouterr().out
    assert "would render debian-12" in printed and "would write" in printed and "would remove os1" in printed
    assert tree_digest(tmp_path) == before
