"""`kiln diff` on build directories made here (fixtures: a manifest, package lists, config.json with origins,
sha256 sidecars, file manifests written from real trees), and the file manifest itself. The real
counterpart is test_repro_vm.py, which diffs two real builds."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from kiln import cli
from kiln.artifacts import compare, filelist
from kiln.core.builddir import BuildDir

NAME = "debian-12+kube-v1.36.1"


def _build(
    root: Path, *, packages: dict[str, str], config: dict[str, object], qcow2: str, tree: Path
) -> Path:
    build = root / NAME
    build.mkdir(parents=True)
    custom = {"build_name": "debian-12", "kubernetes_semver": "v1.36.1"}
    (build / "packer-manifest.json").write_text(json.dumps({"builds": [{"custom_data": custom}]}))
    (build / f"{NAME}.packages").write_text("".join(f"{k}\t{v}\n" for k, v in packages.items()))
    (build / "config.json").write_text(json.dumps({k: {"value": v, "origin": "config/common.json"}
                                                    for k, v in config.items()}))  # fmt: skip
    (build / f"{NAME}.qcow2.sha256").write_text(f"{qcow2}  {NAME}.qcow2\n")
    filelist.write(tree, build / f"{NAME}{filelist.SUFFIX}")
    return build


def _tree(root: Path, files: dict[str, str]) -> Path:
    for rel, text in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(text)
    (root / "bin").symlink_to("usr/bin")
    return root


def test_the_file_manifest_lists_every_path_sorted_with_content_and_links(tmp_path: Path) -> None:
    tree = _tree(tmp_path / "t", {"etc/hostname": "node\n", "usr/bin/kubelet": "x" * 100})
    os.chmod(tree / "usr/bin/kubelet", 0o755)
    out = filelist.write(tree, tmp_path / f"x{filelist.SUFFIX}")
    entries = filelist.read(out)
    assert list(entries) == sorted(entries) == ["/bin", "/etc", "/etc/hostname", "/usr", "/usr/bin",
                                                "/usr/bin/kubelet"]  # fmt: skip
    assert entries["/bin"]["type"] == "l" and entries["/bin"]["target"] == "usr/bin"
    assert entries["/usr/bin/kubelet"]["mode"] == "0755" and entries["/usr/bin/kubelet"]["size"] == 100
    assert len(str(entries["/etc/hostname"]["sha256"])) == 64
    (tmp_path / "bad.jsonl").write_text('{"path": "/a"}\nnot json\n')
    with pytest.raises(Exception, match=r"bad.jsonl:2: not a JSON object"):
        filelist.read(tmp_path / "bad.jsonl")


def test_diff_reports_packages_files_config_and_artifacts(tmp_path: Path, capsys) -> None:  # type: ignore[no-untyped-def]
    ta = _tree(tmp_path / "ta", {"etc/hostname": "node\n", "etc/old": "x"})
    tb = _tree(tmp_path / "tb", {"etc/hostname": "other\n", "etc/new": "y"})
    a = _build(tmp_path / "a", packages={"containerd": "1.6", "jq": "1.6"}, tree=ta, qcow2="aa" * 32,
               config={"extra_packages": "jq", "output_dir": "/a"})  # fmt: skip
    b = _build(tmp_path / "b", packages={"containerd": "1.7", "tree": "2.1"}, tree=tb, qcow2="bb" * 32,
               config={"extra_packages": "tree", "output_dir": "/b"})  # fmt: skip
    assert cli.main(["diff", str(a), str(b)]) == 1
    out = capsys.readouterr().out
    for line in ("+ tree 2.1", "- jq 1.6", "~ containerd 1.6 -> 1.7", "+ /etc/new", "- /etc/old",
                 "~ /etc/hostname (size, sha256)", "~ extra_packages: 'jq' [config/common.json] -> 'tree'",
                 "~ .qcow2: aaaaaaaaaaaaaaaa -> bbbbbbbbbbbbbbbb", "different"):  # fmt: skip
        assert line in out, out
    assert "output_dir" in out.split("where it was built")[1]  # shown, not counted
    assert cli.main(["diff", str(a), str(a), "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["equal"] is True and result["files"]["changed"] == {}


def test_diff_bad_input_is_exit_2(tmp_path: Path, capsys) -> None:  # type: ignore[no-untyped-def]
    assert cli.main(["diff", str(tmp_path / "nope"), str(tmp_path)]) == 2
    assert "not a build directory" in capsys.readouterr().err
    assert cli.main(["diff", "https://storage.googleapis.com/b/release/x", str(tmp_path)]) == 2
    assert "not the URL of a published image's file" in capsys.readouterr().err


def test_a_side_without_a_file_manifest_is_said_not_compared(tmp_path: Path) -> None:
    tree = _tree(tmp_path / "t", {"etc/hostname": "node\n"})
    a = _build(tmp_path / "a", packages={"jq": "1.6"}, config={}, qcow2="aa" * 32, tree=tree)
    b = _build(tmp_path / "b", packages={"jq": "1.6"}, config={}, qcow2="aa" * 32, tree=tree)
    (b / f"{NAME}{filelist.SUFFIX}").unlink()
    result = compare.diff(compare.local(BuildDir.open(a)), compare.local(BuildDir.open(b)))
    assert result["files"]["unavailable"] and compare.equal(result)
    assert "files: not compared" in compare.render(result)
