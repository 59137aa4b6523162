"""The seams: kiln's import graph has no cycles and nothing below the CLI imports it; only cli and config
read the environment; a dry-run build writes nothing; progress comes out as JSON lines for CI systems."""

from __future__ import annotations

import ast
import hashlib
import json
import os
import re
import subprocess
import sys
from pathlib import Path

from kiln import progress

REPO = Path(__file__).resolve().parents[1]
SRC = REPO / "src" / "kiln"


def import_graph() -> dict[str, set[str]]:
    """module -> the kiln modules it imports (at any level: lazy imports inside functions count too)."""
    graph: dict[str, set[str]] = {}
    for path in sorted(SRC.glob("*.py")):
        name = path.stem
        deps: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.level == 1:
                if node.module:
                    deps.add(node.module.split(".")[0])
                else:
                    deps.update(alias.name for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("kiln."):
                deps.add(node.module.split(".")[1])
        graph[name] = {d for d in deps if (SRC / f"{d}.py").is_file()} - {name}
    return graph


def test_import_graph_has_no_cycles() -> None:
    graph = import_graph()
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> None:
        state[node] = 1
        stack.append(node)
        for dep in sorted(graph[node]):
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


def test_nothing_below_the_cli_imports_it() -> None:
    graph = import_graph()
    offenders = sorted(m for m, deps in graph.items() if "cli" in deps and m not in ("cli", "__main__"))
    assert not offenders, f"modules below the CLI import it: {offenders}"


def test_the_graph_test_sees_a_cycle(tmp_path: Path) -> None:
    """The cycle check is not vacuous: the graph it builds has real edges (render -> config, ...)."""
    graph = import_graph()
    assert "config" in graph["render"] and "proc" in graph["packer"]
    assert "render" in graph["validate"] and "packer" in graph["validate"]
    assert "packer" not in graph["render"], "render must take the Packer version as an argument"


def test_only_cli_and_config_read_the_environment() -> None:
    pattern = re.compile(r"os\.environ|getenv\(|environ\[|environ\.get")
    offenders = []
    for path in sorted(SRC.glob("*.py")):
        if path.stem in ("cli", "config"):
            continue
        for number, line in enumerate(path.read_text().splitlines(), 1):
            if pattern.search(line) and not line.lstrip().startswith("#"):
                offenders.append(f"{path.name}:{number}: {line.strip()}")
    assert not offenders, "\n".join(offenders)


def test_no_module_global_dry_run() -> None:
    for path in SRC.glob("*.py"):
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
        [sys.executable, "-m", "kiln", "--dry-run", "build", "debian-12",
         "--var", f"output_dir={out}", "--var", f"cache_dir={cache}"],
        cwd=REPO, capture_output=True, text=True, timeout=120,
        env={**os.environ, "PACKER_VAR_FILES": ""},
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    for stage in ("base", "os", "kubernetes", "finalize"):
        assert f"==> {stage}:" in result.stdout
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
    assert begins == ["base", "os", "kubernetes", "finalize"]
