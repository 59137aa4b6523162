"""goss specs as goss reads them: Go template variables, `range $k, $v :=`, `with`, sprig functions, Go regex
`\\Q...\\E`, `file: contains:`, non-resource top-level keys (kiln's own fixture in image-builder's style)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from kiln.goss import gotemplate
from kiln.goss import specs as goss
from kiln.goss.gofuncs import go_regex, semver_compare
from kiln.goss.gotemplate import TemplateError, render
from kiln_runtime import RUNTIME

SPEC_DIR = goss.spec_dir(RUNTIME.root)

SPEC = Path(__file__).resolve().parent / "fixtures" / "goss-ib" / "node.yaml"
VARS = {
    "kubernetes_version": "v1.31.2",
    "OS": "Debian",
    "sysctls": {"net.ipv4.ip_forward": 1, "net.bridge.bridge-nf-call-iptables": 1},
    "extra_packages": None,
    "nothing": None,
}


def test_image_builder_style_spec_renders_and_loads() -> None:
    spec = goss.load_spec(SPEC, VARS)
    kinds = {(r.type, r.id) for r in spec.resources}
    assert ("kernel-param", "net.ipv4.ip_forward") in kinds
    assert ("file", "/etc/kiln-release") in kinds and ("file", "/etc/debian_version") in kinds
    assert ("command", "echo-version") in kinds
    release = next(r for r in spec.resources if r.id == "/etc/kiln-release")
    assert "contents" in release.checks  # `contains` read as `contents`, as goss does


def test_semver_and_with_choose_what_renders() -> None:
    old = goss.load_spec(SPEC, {**VARS, "kubernetes_version": "v1.28.9", "OS": "Ubuntu"})
    kinds = {(r.type, r.id) for r in old.resources}
    assert ("command", "echo-version") not in kinds and ("file", "/etc/debian_version") not in kinds
    with_pkgs = goss.load_spec(SPEC, {**VARS, "extra_packages": ["jq"]})
    assert ("package", "jq") in {(r.type, r.id) for r in with_pkgs.resources}


@pytest.mark.parametrize(
    ("source", "data", "want"),
    [
        ("{{ $x := 1 }}{{ if true }}{{ $x = 2 }}{{ end }}{{ $x }}", {}, "2"),
        ("{{ range $i, $v := .l }}{{ $i }}{{ $v }}{{ end }}", {"l": ["a", "b"]}, "0a1b"),
        ("{{ range $v := .l }}{{ $v }}{{ end }}", {"l": ["a"]}, "a"),
        ("{{ range .n }}x{{ else }}none{{ end }}", {"n": None}, "none"),
        ("{{ with $v := .a }}{{ $v }}{{ else }}no{{ end }}", {"a": ""}, "no"),
        ("{{ if eq .a 1 2 3 }}in{{ end }}", {"a": 3}, "in"),
        ("{{ if eq .a 2.0 }}num{{ end }}", {"a": 2}, "num"),
        ('{{ index .m "k" }}', {"m": {"k": "v"}}, "v"),
        ('{{ printf "%s=%d %q" .a 3 .a }}', {"a": "x"}, 'x=3 "x"'),
        ('{{ splitList "," .a | join "+" }}', {"a": "a,b"}, "a+b"),
        ('{{ default "d" .a }}{{ default "d" .b }}', {"a": "", "b": "B"}, "dB"),
        ('{{ if hasPrefix "v1" .a }}p{{ end }}{{ .a | toUpper }}{{ .a | upper }}', {"a": "v1x"}, "pV1XV1X"),
        ('{{ if regexMatch "^\\\\d+$" .a }}digits{{ end }}', {"a": "123"}, "digits"),
        ("{{ $.root }}{{ range .l }}{{ $.root }}{{ end }}", {"root": "R", "l": [1]}, "RR"),
        ("{{ len .l }}", {"l": [1, 2]}, "2"),
    ],
)
def test_go_template_constructs(source: str, data: dict, want: str) -> None:
    assert render(source, data) == want


@pytest.mark.parametrize(
    ("source", "data", "error"),
    [
        ("{{ $nope }}", {}, "t.yaml:1: variable $nope is not defined"),
        ("{{ $x = 1 }}", {}, "t.yaml:1: $x is assigned but never declared"),
        (
            "{{ range $a, $b, $c := .l }}{{ end }}",
            {"l": []},
            "t.yaml:1: malformed variable declaration in {{range $a, $b, $c := .l}}",
        ),
        (
            '\n{{ if eq .a "1" }}{{ end }}',
            {"a": 1},
            't.yaml:2: {{eq .a "1"}}: incompatible types for comparison (int and str)',
        ),
        ('{{ semverCompare ">=x.y" .v }}', {"v": "1.0.0"}, "t.yaml:1: {{semverCompare"),
        ("{{ range .a }}{{ end }}", {"a": "str"}, "t.yaml:1: range over a str"),
        ("{{ with .a }}", {"a": 1}, "t.yaml:1: with is never closed"),
        ("{{ nosuchfunc .a }}", {"a": 1}, "function 'nosuchfunc' is not supported"),
    ],
)
def test_go_template_errors_name_file_and_line(source: str, data: dict, error: str) -> None:
    with pytest.raises(TemplateError) as err:
        render(source, data, name="t.yaml")
    assert error in err.value.message, err.value.message


def test_semver_compare_like_sprig() -> None:
    assert semver_compare(">=1.30.0", "v1.31.0") and not semver_compare("<1.30", "v1.30.0")
    assert semver_compare("~1.30", "1.30.9") and not semver_compare("~1.30", "1.31.0")
    assert semver_compare("^1.2", "1.9.0") and not semver_compare("^1.2", "2.0.0")
    assert semver_compare(">= 1.25, < 1.32", "v1.31.0") and semver_compare("<1.0 || >=1.30", "1.30.1")
    assert not semver_compare(">=1.30.0", "1.31.0-rc.1") and semver_compare(">=1.30.0-0", "1.31.0-rc.1")


def test_go_regex_quotes_literally() -> None:
    import re

    assert re.search(go_regex(r"^\Qv1.30.2+k3s\E$"), "v1.30.2+k3s")
    assert not re.search(go_regex(r"^\Q1.30.2\E$"), "1x30x2")
    assert go_regex(r"a\Qb.c") == r"ab\.c"


def test_unknown_goss_type_is_still_an_error_but_other_keys_are_ignored(tmp_path: Path) -> None:
    spec = tmp_path / "s.yaml"
    spec.write_text("anchors: {x: 1}\ndns:\n  localhost: {resolvable: true}\n")
    with pytest.raises(goss.GossSpecError, match="resource type 'dns' is not supported"):
        goss.load_spec(spec, {})
    spec.write_text("anchors: {x: 1}\nfile:\n  /etc/hostname: {exists: true}\n")
    assert [r.id for r in goss.load_spec(spec, {}).resources] == ["/etc/hostname"]


def test_kiln_goss_render_prints_the_merged_spec(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    import json

    import yaml

    from kiln import cli

    varfile = tmp_path / "vars.yaml"
    varfile.write_text(yaml.safe_dump({**VARS, "extra_packages": ["jq"]}))
    assert cli.main(["goss", "render", str(SPEC), "--vars", str(varfile),
                     "--vars-inline", json.dumps({"OS": "Ubuntu"})]) == 0  # fmt: skip
    doc = yaml.safe_load(capsys.readouterr().out)
    assert "jq" in doc["package"] and "/etc/debian_version" not in doc["file"]  # inline vars win
    assert doc["file"]["/etc/kiln-release"]["contents"] == ['/\\QKUBERNETES_SEMVER="v1.31.2"\\E/']
    bad = tmp_path / "bad.yaml"
    bad.write_text("{{ $nope }}\n")
    assert cli.main(["goss", "render", str(bad)]) == 2
    assert f"{bad}:1: variable $nope is not defined" in capsys.readouterr().err


def test_user_specs_and_vars_extend_kilns(tmp_path: Path) -> None:
    """goss_spec_dir, goss_vars_file and goss_vars_inline: the user's spec runs beside kiln's, with vars
    merged over kiln's; evaluated here against a probe that answers like the built image would."""
    from kiln import config
    from kiln.goss import userspecs

    specs = tmp_path / "specs"
    specs.mkdir()
    (specs / "goss.yaml").write_text(
        "{{ $site := .Vars.site }}\nfile:\n  /etc/site-{{ $site }}:\n    exists: {{ .Vars.must_exist }}\n"
    )
    varfile = tmp_path / "vars.yaml"
    varfile.write_text('site: lab\nmust_exist: false\ncontainerd_version: ""\n')  # image-builder's defaults
    cfg = config.load(
        "debian-12",
        overrides={
            "goss_spec_dir": str(specs),
            "goss_vars_file": str(varfile),
            "goss_vars_inline": '{"site": "rack4"}',
        },
    )
    values = cfg.plain()
    # the file's values are defaults under the build's own (as under Packer's vars_inline), inline over all
    kilns = {"containerd_version": "1.7.0", "site": "build"}
    assert userspecs.user_vars(values, RUNTIME.root, kilns) == {
        "site": "rack4",
        "must_exist": False,
        "containerd_version": "1.7.0",
    }
    assert userspecs.user_spec(values, "build", RUNTIME.root) == specs / "goss.yaml"
    assert userspecs.user_spec(values, "final", RUNTIME.root) == specs / "goss.yaml"
    kilns = goss.render_vars(values, {"phase": "build"}, spec_dir=SPEC_DIR)
    vars_ = userspecs.user_vars(values, RUNTIME.root, kilns)
    spec = goss.load_spec(userspecs.user_spec(values, "build", RUNTIME.root), vars_)
    assert [(r.type, r.id) for r in spec.resources] == [("file", "/etc/site-rack4")]
    with pytest.raises(Exception, match="goss_vars_inline: not a JSON object"):
        config.load("debian-12", overrides={"goss_vars_inline": "[1"})
    with pytest.raises(Exception, match="goss_spec_dir has no goss.yaml"):
        userspecs.user_spec({"goss_spec_dir": str(tmp_path / "nothing")}, "build", RUNTIME.root)


def test_printf_q_quotes_as_go_does() -> None:
    render = gotemplate.render
    assert render('{{ printf "%q" .Vars.s }}', {"Vars": {"s": 'a "b" \\ c'}}) == '"a \\"b\\" \\\\ c"'
    assert render('- {{ printf "%q=%s" "k" "v" }}', {"Vars": {}}) == '- "k"=v'


def test_more_sprig_and_goss_functions() -> None:
    data = {"Vars": {"m": {"b": 1, "a": [1]}, "l": [1, 2]}}
    src = (
        '{{ regexReplaceAll "a(x*)b" "-ab-axxb-" "${1}W" }}|{{ toJson .Vars.m }}|{{ keys .Vars.m }}|'
        '{{ hasKey .Vars.m "a" }}|{{ has 3 .Vars.l }}|{{ regexFind "[0-9]+" "ab12c" }}|'
        "{{ range mkSlice 1 2 }}{{ . }}{{ end }}"
    )
    assert render(src, data) == '-W-xxW-|{"b":1,"a":[1]}|[a b]|true|false|12|12'
    with pytest.raises(TemplateError, match="spec.yaml:1: .*hasKey"):
        render("{{ hasKey }}", data, name="spec.yaml")


def test_a_build_checks_the_users_goss_files_before_any_stage(tmp_path: Path) -> None:
    """image-builder's goss-args.json names its goss vars file relative to its own images/capi, and its
    goss-vars.yaml has no section for Debian: both are exit 2 before any stage runs, naming the file."""
    import subprocess
    import sys

    def dry_run(var_file: Path) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "kiln", "build", "debian-12", "--dry-run", "--var-file", str(var_file)],
            capture_output=True, text=True, cwd=RUNTIME.root, timeout=120,
        )  # fmt: skip

    args = tmp_path / "goss-args.json"
    args.write_text('{"goss_tests_dir": "packer/goss", "goss_vars_file": "packer/goss/goss-vars.yaml"}')
    run = dry_run(args)
    assert run.returncode == 2, run.stderr
    assert f"{args}: goss_vars_file: packer/goss/goss-vars.yaml does not exist" in run.stderr
    assert "==> base" not in run.stdout + run.stderr
    specs = tmp_path / "goss"
    specs.mkdir()
    (specs / "goss.yaml").write_text(
        'service:\n{{ range $name, $s := index .Vars .Vars.OS .Vars.PROVIDER "service" }}\n'
        "  {{ $name }}: {enabled: true}\n{{ end }}\n"
    )
    varfile = specs / "goss-vars.yaml"
    varfile.write_text('ubuntu:\n  qemu:\n    service: {ssh: {}}\ncontainerd_version: ""\n')
    site = tmp_path / "site.json"
    site.write_text(json.dumps({"goss_spec_dir": str(specs), "goss_vars_file": str(varfile)}))
    run = dry_run(site)
    assert run.returncode == 2, run.stderr
    assert f"{specs / 'goss.yaml'}:2: " in run.stderr and "of a nil value" in run.stderr
    assert "==> base" not in run.stdout + run.stderr
