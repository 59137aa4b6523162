"""goss specs, vars, the strict Go-template renderer and the matchers (checked against goss's manual)."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

import pytest

from kiln import config
from kiln.goss import gotemplate, reports
from kiln.goss import specs as goss
from kiln.goss.matchers import GossSpecError, compile_matcher, patterns, stream_matcher
from kiln.goss.probe import TestinfraProbe
from kiln_runtime import RUNTIME

SPEC_DIR = goss.spec_dir(RUNTIME.root)

FINAL_EXTRA = {
    "verify_user": "kiln-verify",
    "verify_key_marker": "kiln-verify-0",
    "verify_instance_id": "iid-0",
    "verify_firmware": "efi",
}


def m(expected: Any, actual: Any) -> bool:
    return compile_matcher(expected, "test")(actual)


# --- Go templates ----------------------------------------------------------------------------------


def test_template_substitutes_vars_and_trims_whitespace() -> None:
    src = "a: {{ .Vars.x }}\nlist:\n{{- range .Vars.items }}\n  - {{ . }}\n{{- end }}\n"
    out = gotemplate.render(src, {"Vars": {"x": "one", "items": ["p", "q"]}})
    assert out == "a: one\nlist:\n  - p\n  - q\n"


def test_template_if_else_and_functions() -> None:
    src = '{{ if eq .Vars.os "debian" }}deb{{ else if eq .Vars.os "redhat" }}rpm{{ else }}?{{ end }}'
    assert gotemplate.render(src, {"Vars": {"os": "debian"}}) == "deb"
    assert gotemplate.render(src, {"Vars": {"os": "redhat"}}) == "rpm"
    assert gotemplate.render(src, {"Vars": {"os": "arch"}}) == "?"
    assert gotemplate.render("{{ if not .Vars.e }}empty{{ end }}", {"Vars": {"e": ""}}) == "empty"
    assert gotemplate.render("{{ range .Vars.l }}x{{ else }}none{{ end }}", {"Vars": {"l": []}}) == "none"
    assert gotemplate.render(
        "{{ range .Vars.l }}{{ $.Vars.p }}{{ . }} {{ end }}", {"Vars": {"l": [1, 2], "p": "n"}}
    ) == ("n1 n2 ")
    assert gotemplate.render("{{ .Vars.s | toUpper }}", {"Vars": {"s": "ab"}}) == "AB"
    assert gotemplate.render('{{ index .Vars.m "k" }}', {"Vars": {"m": {"k": "v"}}}) == "v"


def test_template_undefined_variable_is_an_error_naming_file_and_line() -> None:
    with pytest.raises(gotemplate.TemplateError, match=r"spec.yaml:2: \.Vars\.missing is not defined"):
        gotemplate.render("ok: 1\nbad: {{ .Vars.missing }}\n", {"Vars": {}}, name="spec.yaml")
    with pytest.raises(gotemplate.TemplateError, match=r"\.Vars\.a\.b is not defined"):
        gotemplate.render("{{ .Vars.a.b }}", {"Vars": {"a": {}}})


def test_template_unsupported_constructs_are_errors() -> None:
    for src in ('{{ define "x" }}{{ end }}', "{{ sprig_thing .Vars.x }}", "{{ if .Vars.x }}", "{{ end }}"):
        with pytest.raises(gotemplate.TemplateError):
            gotemplate.render(src, {"Vars": {"x": 1}})
    with pytest.raises(gotemplate.TemplateError, match="value is null"):
        gotemplate.render("{{ .Vars.n }}", {"Vars": {"n": None}})


def test_lists_and_maps_print_as_go_prints_them() -> None:
    data = {"Vars": {"l": ["amazon-ssm-agent"], "e": [], "m": {"b": 2, "a": True}}}
    assert gotemplate.render("stdout: {{ .Vars.l }} / {{ .Vars.e }} / {{ .Vars.m }}", data) == (
        "stdout: [amazon-ssm-agent] / [] / map[a:true b:2]"
    )


def test_index_follows_go_a_missing_key_is_nil_and_nil_cannot_be_indexed() -> None:
    data = {"Vars": {"os": {"qemu": {"service": {"x": 1}}}}}
    src = '{{ range $k, $v := index .Vars "os" "qemu" "command" }}{{ $k }}{{ else }}none{{ end }}'
    assert gotemplate.render(src, data) == "none"
    with pytest.raises(gotemplate.TemplateError, match="spec.yaml:1: .*index 'command' of a nil value"):
        gotemplate.render('{{ index .Vars "os" "ova" "command" }}', data, name="spec.yaml")
    with pytest.raises(gotemplate.TemplateError, match="index 3 is not defined"):
        gotemplate.render("{{ index .Vars.l 3 }}", {"Vars": {"l": [1]}})


# --- matchers, each as goss's manual documents it ----------------------------------------------------


def test_default_matchers_equality() -> None:
    assert m("foo", "foo") and not m("foo", "foobar")
    assert m(True, True) and not m(True, False)
    assert m(65534, 65534) and not m(65534, 0)
    assert m("55", 55)  # string matcher converts the system value to a string
    assert m(128, "128")  # transform: kernel-param strings compared numerically


def test_default_array_matcher_is_contain_elements_without_duplicates() -> None:
    content = ["group1", "group2", "group3"]
    assert m(["group1", "group2"], content)
    assert not m(["group1", "group2", "group2"], content)  # manual: the 2nd group2 is not in the content
    assert not m(["group4"], content)


def test_string_matchers() -> None:
    # manual: content 42 matches '42', have-prefix 4, have-suffix 2, match-regexp \d{2}, contain-substring 2
    spec = {
        "and": [
            "42",
            {"have-prefix": "4"},
            {"have-suffix": "2"},
            {"match-regexp": r"\d{2}"},
            {"contain-substring": "2"},
        ]
    }
    assert m(spec, 42)
    assert not m({"have-prefix": "5"}, 42)
    assert not m({"have-suffix": "4"}, "42")
    assert not m({"match-regexp": r"^\d{3}$"}, "42")
    assert not m({"contain-substring": "7"}, "42")


def test_numeric_matchers() -> None:
    spec = {"and": [42, 42.0, {"gt": 40}, {"lt": 45}]}
    assert m(spec, "42")
    assert m({"ge": 42}, 42) and m({"le": 42}, "42") and not m({"gt": 42}, 42) and not m({"lt": 42}, 42)
    assert not m({"gt": 200}, "128")  # manual: the failing somaxconn example
    assert not m({"gt": 1}, "not a number")


def test_array_matchers() -> None:
    content = ["foo", "bar", "moo"]
    assert m({"contain-elements": ["foo", "bar"]}, content)
    assert m({"equal": ["foo", "bar", "moo"]}, content)
    assert not m({"equal": ["foo", "moo", "bar"]}, content)  # order matters for equal
    assert m({"consist-of": ["foo", {"have-prefix": "m"}, "bar"]}, content)  # order does not
    assert not m({"consist-of": ["foo", "bar"]}, content)  # every element must be accounted for
    assert m({"contain-element": {"have-prefix": "b"}}, content)
    assert not m({"contain-element": {"have-prefix": "z"}}, content)
    assert m({"contain-element": "b"}, "a\nb\nc")  # strings are split on newlines


def test_misc_matchers() -> None:
    assert m({"have-len": 3}, ["a", "b", "c"]) and m({"have-len": 2}, "ab") and not m({"have-len": 1}, "ab")
    assert m({"have-key": "baz"}, {"foo": "bar", "baz": "bing"}) and not m({"have-key": "x"}, {"foo": 1})
    assert m({"not": "FAIL"}, "PASS") and not m({"not": "FAIL"}, "FAIL")
    assert m({"or": ["a", "b"]}, "b") and not m({"or": ["a", "b"]}, "c")
    assert not m({"and": ["a", {"have-len": 2}]}, "a")


def test_semver_constraint_examples_from_the_manual() -> None:
    assert m({"semver-constraint": ">1.0.0 <2.0.0 !=1.5.0"}, ["1.0.1", "1.9.9"])
    assert m({"not": {"semver-constraint": ">1.0.0 <2.0.0 !=1.5.0"}}, ["1.0.1", "1.5.0", "1.9.9"])
    assert m({"semver-constraint": ">5.0.0 || < 1.5.0"}, "1.0.1")
    assert not m({"semver-constraint": ">=1.24.0"}, "1.23.9")
    assert m({"semver-constraint": ">=1.30.0-0"}, "1.30.2")
    assert not m({"semver-constraint": ">=1.30.0"}, "1.30.0-rc.1")  # pre-releases rank below the release
    assert not m({"semver-constraint": ">=1.0.0"}, "v1.30.2")  # not a valid semver: fails, like goss


def test_unsupported_or_malformed_matchers_are_errors_not_passes() -> None:
    for bad in ({"gjson": {"a": 1}}, {"have-prefix": "a", "have-suffix": "b"}, {"have-len": "3"}, None):
        with pytest.raises(GossSpecError):
            compile_matcher(bad, "file.yaml: command.x.stdout")
    with pytest.raises(GossSpecError, match="semver"):
        compile_matcher({"semver-constraint": ">=1.x"}, "w")
    with pytest.raises(GossSpecError, match="regexp"):
        compile_matcher({"match-regexp": "("}, "w")


def test_patterns_follow_goss_legacy_contains_semantics() -> None:
    out = "containerd github.com/containerd/containerd 1.6.20~ds1 1.6.20~ds1-1\nsecond line\n"
    assert patterns(["1.6.20", "/^containerd /", "!docker", "!/^third/"], "w")(out)
    assert not patterns(["1.7.0"], "w")(out)  # missing substring
    assert not patterns(["!second"], "w")(out)  # inverse found
    assert not patterns(["!/^second/"], "w")(out)
    assert patterns(["/^second line$/"], "w")(out)  # regexes apply to each line
    assert patterns(["\\!literal"], "w")("a !literal b")  # escaped: a line containing "!literal"
    assert patterns(["!/./"], "w")("")  # nothing printed
    assert not patterns(["!/./"], "w")("x\n")
    assert patterns([""], "w")("")  # the empty pattern matches even empty output
    # a list of strings on a streamed attribute is patterns; a map is a normal matcher on the whole text
    assert stream_matcher({"match-regexp": "^v1\\.30\\.2\\s*$"}, "w")("v1.30.2\n")


# --- specs --------------------------------------------------------------------------------------------


def _values(target: str) -> dict[str, Any]:
    return dict(config.load(target).values)


@pytest.mark.parametrize("target", config.targets())
@pytest.mark.parametrize("phase", ["build", "final"])
def test_every_target_renders_complete_vars_and_a_valid_spec(target: str, phase: str) -> None:
    """No goss variable left undefined, for every shipped target and both phases (strict rendering)."""
    extra = {"phase": phase, **(FINAL_EXTRA if phase == "final" else {})}
    vars_ = goss.render_vars(_values(target), extra, spec_dir=SPEC_DIR)
    spec = goss.load_spec(SPEC_DIR / goss.ENTRY[phase], vars_)
    ids = {(r.type, r.id) for r in spec.resources}
    assert ("service", "containerd") in ids and ("command", "kubelet --version") in ids
    if phase == "final":
        assert ("command", "ssh-host-keys-generated-this-boot") in ids
    else:
        assert not any(r.source.endswith("hygiene.yaml") for r in spec.resources)
    for path in spec.files:
        text = path.read_text()
        for ref in gotemplate.referenced_vars(text):
            name = ref.strip(".").split(".")[0]
            assert name in vars_, f"{path.name} uses .Vars{ref}, which vars.yaml.j2 does not define"


def test_vars_follow_the_config() -> None:
    values = _values("debian-12")
    values.update(kubernetes_semver="v1.29.4", kubernetes_series="v1.29", kubernetes_deb_version="1.29.4-1.1")
    values.update(kubernetes_source_type="pkg", extra_packages=("jq", "htop"))
    vars_ = goss.render_vars(values, {"phase": "build"}, spec_dir=SPEC_DIR)
    assert vars_["kubernetes_semver_regex"] == "v1\\.29\\.4"
    assert vars_["kubernetes_pkg_version"] == "1.29.4-1.1"
    assert {"jq", "htop"} <= set(vars_["node_packages"])
    spec = goss.load_spec(SPEC_DIR / "goss.yaml", vars_)
    kubelet = next(r for r in spec.resources if r.type == "package" and r.id == "kubelet")
    assert kubelet.checks["versions"].matcher(["1.29.4-1.1"]) and not kubelet.checks["versions"].matcher(
        ["1.30.2-1.1"]
    )
    values["kubernetes_source_type"] = "http"
    spec = goss.load_spec(
        SPEC_DIR / "goss.yaml", goss.render_vars(values, {"phase": "build"}, spec_dir=SPEC_DIR)
    )
    assert not any(r.type == "package" and r.id == "kubelet" for r in spec.resources)


def test_site_settings_are_checked_by_kilns_specs() -> None:
    """The image-builder settings of the suite's site var file each get a check, in the build and/or on the
    booted image; without them the checks are not there."""
    site = Path(__file__).parent / "fixtures" / "site" / "node.json"
    values = dict(config.load("debian-12", var_files=[site]).values)
    by_phase = {}
    for phase in ("build", "final"):
        extra = {"phase": phase, **(FINAL_EXTRA if phase == "final" else {})}
        spec = goss.load_spec(
            SPEC_DIR / goss.ENTRY[phase], goss.render_vars(values, extra, spec_dir=SPEC_DIR)
        )
        by_phase[phase] = {(r.type, r.id): r for r in spec.resources}
    build, final = by_phase["build"], by_phase["final"]
    grub = build[("file", "/etc/default/grub.d/90-kiln-extra.cfg")].checks["contents"].matcher
    assert grub('GRUB_CMDLINE_LINUX="$GRUB_CMDLINE_LINUX mitigations=auto nosoftlockup"')
    assert not grub('GRUB_CMDLINE_LINUX="$GRUB_CMDLINE_LINUX mitigations=auto"')
    cmdline = final[("file", "/proc/cmdline")].checks["contents"].matcher
    assert cmdline("BOOT_IMAGE=/vmlinuz root=UUID=x ro mitigations=auto nosoftlockup")
    assert not cmdline("BOOT_IMAGE=/vmlinuz root=UUID=x ro")
    assert ("file", "/proc/cmdline") not in build
    registry = build[("file", "/etc/kiln/kubeadm-image-repository")].checks["contents"].matcher
    assert registry("# kiln\nregistry.internal.example/k8s\n") and not registry("registry.k8s.io\n")
    toml = build[("file", "/etc/containerd/config.toml")].checks["contents"].matcher
    assert not toml('SystemdCgroup = true\nsandbox_image = "registry.internal.example/k8s/pause:3.10.1"\n')
    assert toml(
        'SystemdCgroup = true\nsandbox_image = "registry.internal.example/k8s/pause:3.10.1"\n'
        "# kiln: containerd_additional_settings\n"
    )
    plain = dict(config.load("debian-12").values)
    spec = goss.load_spec(
        SPEC_DIR / "goss.yaml", goss.render_vars(plain, {"phase": "build"}, spec_dir=SPEC_DIR)
    )
    ids = {(r.type, r.id) for r in spec.resources}
    assert ("file", "/etc/kiln/kubeadm-image-repository") not in ids
    assert ("file", "/etc/default/grub.d/90-kiln-extra.cfg") not in ids


@pytest.mark.parametrize("source", ["http", "pkg"])
def test_containerd_version_is_checked_with_either_source(source: str) -> None:
    values = _values("debian-12")
    values.update(containerd_source_type=source, containerd_version="1.6.20")
    spec = goss.load_spec(
        SPEC_DIR / "goss.yaml", goss.render_vars(values, {"phase": "build"}, spec_dir=SPEC_DIR)
    )
    check = next(r for r in spec.resources if r.id == "containerd --version").checks["stdout"].matcher
    assert check("containerd github.com/containerd/containerd 1.6.20~ds1 1.6.20~ds1-1+deb12u3\n")
    assert check("containerd github.com/containerd/containerd/v2 v1.6.20 0123abc\n")
    assert not check("containerd github.com/containerd/containerd 1.6.2 abc\n")
    assert not check("containerd github.com/containerd/containerd 1.6.201 abc\n")
    assert not check("containerd github.com/containerd/containerd/v2 v2.3.2 0123abc\n")


def test_missing_config_key_for_vars_is_an_input_error() -> None:
    values = _values("debian-12")
    del values["kubernetes_series"]
    with pytest.raises(goss.InputError, match=r"vars.yaml.j2: 'kubernetes_series' is undefined"):
        goss.render_vars(values, {"phase": "build"}, spec_dir=SPEC_DIR)
    with pytest.raises(goss.InputError, match="verify_user"):
        goss.render_vars(_values("debian-12"), {"phase": "final"}, spec_dir=SPEC_DIR)


def _spec_dir(tmp_path: Path, files: dict[str, str]) -> Path:
    for name, text in files.items():
        (tmp_path / name).write_text(text)
    return tmp_path


def test_unsupported_resource_type_and_attribute_are_errors(tmp_path: Path) -> None:
    d = _spec_dir(tmp_path, {"a.yaml": "http:\n  http://x:\n    status: 200\n"})
    with pytest.raises(GossSpecError, match=r"a.yaml: resource type 'http' is not supported"):
        goss.load_spec(d / "a.yaml", {})
    d = _spec_dir(tmp_path, {"b.yaml": "service:\n  sshd:\n    enabled: true\n    runlevels: ['3']\n"})
    with pytest.raises(GossSpecError, match=r"b.yaml: service.sshd: attribute 'runlevels' is not supported"):
        goss.load_spec(d / "b.yaml", {})
    d = _spec_dir(tmp_path, {"c.yaml": "command:\n  true:\n    stdout: []\n"})
    with pytest.raises(GossSpecError, match="required attribute 'exit-status'"):
        goss.load_spec(d / "c.yaml", {})
    d = _spec_dir(tmp_path, {"d.yaml": "gossfile:\n  missing.yaml: {}\n"})
    with pytest.raises(GossSpecError, match="missing.yaml does not exist"):
        goss.load_spec(d / "d.yaml", {})


def test_gossfile_includes_globs_and_skip(tmp_path: Path) -> None:
    d = _spec_dir(
        tmp_path,
        {
            "main.yaml": "gossfile:\n  inc-*.yaml: {}\n  never.yaml:\n    skip: true\n",
            "inc-a.yaml": "file:\n  /a:\n    exists: true\n",
            "inc-b.yaml": "file:\n  /b:\n    exists: {{ .Vars.b }}\n",
        },
    )
    spec = goss.load_spec(d / "main.yaml", {"b": "false"})
    assert sorted(r.id for r in spec.resources) == ["/a", "/b"]
    assert spec.resources[1].checks["exists"].expected is False


# --- evaluation with a fake host (unit) ---------------------------------------------------------------


class FakeProbe:
    def __init__(self) -> None:
        self.services = {"containerd": (True, True), "kubelet": (False, False)}

    def package(self, name: str) -> tuple[bool, list[str]]:
        return (True, ["1.6.20~ds1-1"]) if name == "containerd" else (False, [])

    def service(self, name: str) -> tuple[bool, bool]:
        return self.services.get(name, (False, False))

    def kernel_param(self, name: str) -> str:
        if name == "net.ipv4.ip_forward":
            return "1"
        raise goss.ProbeError(f"kernel-param {name}: not found")

    def file(self, path: str, wanted: set[str]) -> dict[str, Any]:
        if path == "/etc/kiln-release":
            return {"exists": True, "filetype": "file", "mode": "0644", "owner": "root", "contents": "A=1\n"}
        return {"exists": False}

    def command(self, cmd: str, timeout: float) -> tuple[int, str, str]:
        return (0, "Kubernetes v1.30.2\n", "") if cmd == "kubelet --version" else (127, "", "not found\n")

    def user(self, name: str) -> dict[str, Any]:
        return {"exists": False}

    def group(self, name: str) -> dict[str, Any]:
        return {"exists": False}


def test_evaluate_reports_each_failure_with_expected_and_found(tmp_path: Path) -> None:
    spec_text = """
package:
  containerd: {installed: true, versions: {contain-element: {have-prefix: "1.6.20"}}}
  docker.io: {installed: false}
  runc: {installed: true, versions: ["1.1"]}
service:
  containerd: {enabled: true, running: true}
  kubelet: {enabled: true}
kernel-param:
  net.ipv4.ip_forward: {value: "1"}
  net.bridge.bridge-nf-call-iptables: {value: "1"}
file:
  /etc/kiln-release: {exists: true, mode: "0644", contents: ["A=1", "!B="]}
  /etc/absent: {exists: true, mode: "0600"}
command:
  kubelet --version: {exit-status: 0, stdout: ["/^Kubernetes v1\\\\.30\\\\.2$/"]}
  crictl --version: {exit-status: 0, skip: true}
"""
    d = _spec_dir(tmp_path, {"s.yaml": spec_text})
    results = goss.evaluate(goss.load_spec(d / "s.yaml", {}), FakeProbe())
    failed = {(r.resource_type, r.resource_id, r.property) for r in reports.failures(results)}
    assert failed == {
        ("package", "runc", "installed"),
        ("package", "runc", "versions"),
        ("service", "kubelet", "enabled"),
        ("kernel-param", "net.bridge.bridge-nf-call-iptables", "value"),
        ("file", "/etc/absent", "exists"),
        ("file", "/etc/absent", "mode"),
    }
    skipped = [r for r in results if r.skipped]
    assert [(r.resource_id, r.property) for r in skipped] == [("crictl --version", "exit-status")]
    assert reports.summary(results) == {"test-count": 18, "failed-count": 6, "skipped-count": 1}
    table = reports.failure_table(results)
    assert "service kubelet" in table and "enabled" in table and "false" in table
    assert "net.bridge.bridge-nf-call-iptables: not found" in table

    json_path, junit_path = reports.write_reports(results, tmp_path / "goss", {"phase": "build"})
    doc = json.loads(json_path.read_text())
    assert doc["summary"]["failed-count"] == 6
    kubelet = next(r for r in doc["results"] if r["resource-id"] == "kubelet")
    assert (
        kubelet["resource-type"] == "Service" and kubelet["successful"] is False and kubelet["found"] is False
    )
    suite = ET.parse(junit_path).getroot().find("testsuite")
    assert suite is not None and suite.get("tests") == "18" and suite.get("failures") == "6"
    assert len(suite.findall("testcase/failure")) == 6 and len(suite.findall("testcase/skipped")) == 1
    # goss's own JSON output reads back into the same results (the goss-binary path)
    again = reports.results_from_goss_json(doc)
    assert [(r.resource_type, r.resource_id, r.property, r.successful) for r in again] == [
        (r.resource_type, r.resource_id, r.property, r.successful) for r in results
    ]


# --- evaluation on a real host: this machine through testinfra's local backend --------------------------


def test_evaluate_on_the_local_machine_with_testinfra(tmp_path: Path) -> None:
    """The real counterpart of the fake probe: testinfra's modules against this machine."""
    import testinfra

    shutil.copy("/etc/passwd", tmp_path / "passwd-copy")
    (tmp_path / "passwd-copy").chmod(0o644)  # a link's mode and size are its target's, as in testinfra
    (tmp_path / "link").symlink_to(tmp_path / "passwd-copy")
    (tmp_path / "dangling").symlink_to(tmp_path / "nowhere")  # a link to nothing does not exist
    (tmp_path / "a dir with spaces").mkdir(mode=0o750)
    (tmp_path / "a dir with spaces").chmod(0o750)
    os.mkfifo(tmp_path / "fifo")
    shutil.copy(tmp_path / "passwd-copy", tmp_path / "passwd-copy-2")
    (tmp_path / "passwd-copy-2").chmod(0o640)
    uid_root = "0"
    spec_text = f"""
file:
  {tmp_path}/passwd-copy:
    exists: true
    filetype: file
    contents: ["/^root:x:{uid_root}:/", "!/^nosuchuser:/"]
    size: {{gt: 10}}
  {tmp_path}/link:
    exists: true
    filetype: symlink
    linked-to: {tmp_path}/passwd-copy
    mode: "0644"
    size: {(tmp_path / "passwd-copy").stat().st_size}
  {tmp_path}/missing:
    exists: false
  {tmp_path}/dangling:
    exists: false
  {tmp_path}/a dir with spaces:
    exists: true
    filetype: directory
    mode: "0750"
  {tmp_path}/fifo:
    exists: true
    filetype: pipe
  {tmp_path}/passwd-copy-2:
    exists: true
    mode: "0640"
    owner: root
    group: root
    size: {(tmp_path / "passwd-copy").stat().st_size}
    sha256: {hashlib.sha256((tmp_path / "passwd-copy").read_bytes()).hexdigest()}
  /etc:
    exists: true
    filetype: directory
    mode: "0755"
    owner: root
command:
  printf 'kiln 1.2.3\\nsecond\\n':
    exit-status: 0
    stdout: ["/^kiln \\\\d+\\\\.\\\\d+/", "!third"]
  version-check:
    exec: "echo 1.30.2"
    exit-status: 0
    stdout: {{semver-constraint: ">=1.30.0 <1.31.0"}}
  exit 3:
    exit-status: 3
  must-fail:
    exec: "echo hello"
    exit-status: 0
    stdout: ["goodbye"]
user:
  root: {{exists: true, uid: 0, home: /root}}
  kiln-no-such-user: {{exists: false}}
group:
  root: {{exists: true, gid: 0}}
kernel-param:
  kernel.ostype: {{value: Linux}}
package:
  bash: {{installed: true, versions: {{contain-element: {{match-regexp: "^5\\\\."}}}}}}
  kiln-no-such-package: {{installed: false}}
"""
    d = _spec_dir(tmp_path, {"local.yaml": spec_text})
    probe = TestinfraProbe(testinfra.get_host("local://"))
    results = goss.evaluate(goss.load_spec(d / "local.yaml", {}), probe)
    failed = [(r.resource_id, r.property) for r in reports.failures(results)]
    assert failed == [("must-fail", "stdout")], reports.failure_table(results)
    assert len(results) > 20


def test_a_resource_names_its_phase_with_goss_meta(tmp_path: Path) -> None:
    from kiln.goss.treephase import phase_of

    spec = tmp_path / "phases.yaml"
    spec.write_text(
        "package:\n  containerd: {installed: true}\n"
        "service:\n  kubelet: {enabled: true}\n"
        "  containerd: {enabled: true, meta: {kiln_phase: tree}}\n"  # needs a running system: stays boot
        "file:\n  /etc/hostname: {exists: true}\n  /run/containerd: {exists: true}\n"
        "  /etc/machine-id: {exists: true, meta: {kiln_phase: boot, owner: sig-node}}\n"
        "command:\n  crictl --version: {exit-status: 0, meta: {kiln_phase: tree}}\n"
        "  kubeadm version: {exit-status: 0}\n"
    )
    phases = {f"{r.type} {r.id}": phase_of(r) for r in goss.load_spec(spec, {}).resources}
    assert phases == {
        "package containerd": "tree",
        "service kubelet": "boot",
        "service containerd": "boot",
        "file /etc/hostname": "tree",
        "file /run/containerd": "boot",
        "file /etc/machine-id": "boot",
        "command crictl --version": "tree",
        "command kubeadm version": "either",
    }
    spec.write_text("package:\n  containerd: {installed: true, meta: {kiln_phase: boots}}\n")
    with pytest.raises(GossSpecError, match=r"phases.yaml: package.containerd: meta.kiln_phase 'boots'"):
        goss.load_spec(spec, {})


def test_a_file_check_is_one_round_trip_and_resources_overlap(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Over SSH to a TCG guest each question costs about a second: a file's type, mode, owner, group and
    size come from one command, and the evaluator keeps a few resources in flight, in the spec's order."""
    import threading
    import time as time_mod

    import testinfra

    host = testinfra.get_host("local://")
    calls: list[str] = []
    in_flight, peak = [0], [0]
    lock = threading.Lock()
    real_run = host.run

    def counting_run(command: str, *args: str, **kwargs: Any) -> Any:
        with lock:
            calls.append(command)
            in_flight[0] += 1
            peak[0] = max(peak[0], in_flight[0])
        try:
            time_mod.sleep(0.2)  # a round trip's latency, so that overlap can show
            return real_run(command, *args, **kwargs)
        finally:
            with lock:
                in_flight[0] -= 1

    monkeypatch.setattr(host, "run", counting_run)
    paths = [tmp_path / f"f{i}" for i in range(8)]
    for p in paths:
        p.write_text("x")
    spec = tmp_path / "files.yaml"
    entry = "{exists: true, filetype: file, mode: '0644', owner: root, size: 1}"
    spec.write_text("file:\n" + "".join(f"  {p}: {entry}\n" for p in paths))
    for p in paths:
        p.chmod(0o644)
    results = goss.evaluate(goss.load_spec(spec, {}), TestinfraProbe(host))
    assert all(r.successful for r in results), reports.failure_table(results)
    assert len(calls) == len(paths)  # one command per file
    assert peak[0] > 1  # resources overlapped
    assert [r.resource_id for r in results][:: len(results) // len(paths)] == [str(p) for p in paths]


def test_packages_come_from_one_dpkg_query_with_testinfras_answers(monkeypatch: pytest.MonkeyPatch) -> None:
    """One query for every package, and the same verdicts and versions as testinfra's own module."""
    import shutil as sh

    import testinfra

    if not sh.which("dpkg-query"):
        pytest.skip("needs dpkg")
    host = testinfra.get_host("local://")
    calls: list[str] = []
    real_run = host.run

    def counting_run(command: str, *args: str, **kwargs: Any) -> Any:
        calls.append(command)
        return real_run(command, *args, **kwargs)

    probe = TestinfraProbe(host)
    assert host.package  # testinfra's system detection (which package module), before the count
    monkeypatch.setattr(host, "run", counting_run)
    names = ["bash", "coreutils", "dpkg", "kiln-no-such-package", "libc6"]
    answers = {n: probe.package(n) for n in names}
    assert calls == [TestinfraProbe.DPKG_QUERY]
    monkeypatch.undo()
    for name in names:
        pkg = host.package(name)
        assert answers[name] == ((True, [pkg.version]) if pkg.is_installed else (False, [])), name
    assert answers["bash"][0] and not answers["kiln-no-such-package"][0]
