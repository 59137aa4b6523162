"""Bad input never crashes kiln or destroys a file: every class of the hostile-input report, each with a
reproducing case, plus hypothesis properties (for any input: a value or a clear InputError, exit 0 or 2)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from kiln import cli, config
from kiln.config.settings import BY_NAME
from kiln.core import inputs
from kiln.core.builddir import BuildDir
from kiln.core.errors import ConfigError, InputError
from kiln.publish import images
from kiln.vm import boot, cidata
from kiln_runtime import RUNTIME

REPO = Path(__file__).resolve().parents[1]
KILN = [sys.executable, "-m", "kiln"]
HYPO = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


def run_kiln(
    *args: str, cwd: Path | None = None, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess:
    full_env = {**os.environ, "PACKER_VAR_FILES": "", **(env or {})}
    return subprocess.run(
        [*KILN, *args], cwd=cwd or REPO, env=full_env, capture_output=True, text=True, timeout=120
    )


def load_problems(var_text: str | bytes, tmp_path: Path, name: str = "vars.json") -> list[str]:
    path = tmp_path / name
    path.write_bytes(var_text if isinstance(var_text, bytes) else var_text.encode("utf-8", "surrogatepass"))
    with pytest.raises(ConfigError) as err:
        config.load("debian-12", var_files=[path], repo_root=REPO)
    return err.value.problems


# --- the one reader --------------------------------------------------------------------------------------


def test_reader_refuses_what_is_not_a_regular_file(tmp_path: Path) -> None:
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    loop = tmp_path / "loop"
    loop.symlink_to(loop)
    dangling = tmp_path / "dangling"
    dangling.symlink_to(tmp_path / "gone")
    cases = {
        fifo: "is a FIFO",
        tmp_path: "is a directory",
        Path("/dev/zero"): "is a character device",
        dangling: "dangling symlink",
        loop: "cannot be opened",
        tmp_path / ("x" * 300): "cannot be opened",
        tmp_path / "missing": "does not exist",
    }
    for path, expect in cases.items():
        with pytest.raises(InputError) as err:
            inputs.read_text(path, "var file")
        assert expect in err.value.message, (path, err.value.message)
        assert err.value.message.startswith(str(path)[:40])


def test_reader_limits_size_encoding_nesting_and_integers(tmp_path: Path) -> None:
    big = tmp_path / "big.json"
    big.write_bytes(b" " * (inputs.CONFIG_LIMIT + 1))
    with pytest.raises(InputError, match=r"big.json: var file is 1 MB \(limit 1 MB\)"):
        inputs.read_text(big, "var file")
    latin = tmp_path / "latin.json"
    latin.write_bytes(b'{"os_version": "caf\xe9"}')
    with pytest.raises(InputError, match=r"is not UTF-8 \(byte 0xe9 at offset 19\)"):
        inputs.read_text(latin)
    cases = {
        "[" * 100_000 + "]" * 100_000: "nested too deeply",
        '{"a": ' + "1" * 5000 + "}": "5000-digit integer",
        '{"a": "\\ud800"}': "lone UTF-16 surrogate",
        '{"a": NaN}': "NaN is not valid JSON",
        json.dumps(
            {
                "a": [
                    [
                        [
                            [
                                [
                                    [
                                        [
                                            [
                                                [
                                                    [
                                                        [
                                                            [
                                                                [
                                                                    [
                                                                        [
                                                                            [
                                                                                [
                                                                                    [
                                                                                        [
                                                                                            [
                                                                                                [
                                                                                                    [
                                                                                                        [
                                                                                                            [
                                                                                                                [
                                                                                                                    [
                                                                                                                        [
                                                                                                                            [
                                                                                                                                [
                                                                                                                                    [
                                                                                                                                        [
                                                                                                                                            [
                                                                                                                                                [
                                                                                                                                                    [
                                                                                                                                                        [
                                                                                                                                                            [
                                                                                                                                                                [
                                                                                                                                                                    [
                                                                                                                                                                        [
                                                                                                                                                                            [
                                                                                                                                                                                [
                                                                                                                                                                                    [
                                                                                                                                                                                        [
                                                                                                                                                                                            [
                                                                                                                                                                                                [
                                                                                                                                                                                                    [
                                                                                                                                                                                                        [
                                                                                                                                                                                                            [
                                                                                                                                                                                                                [
                                                                                                                                                                                                                    [
                                                                                                                                                                                                                        [
                                                                                                                                                                                                                            [
                                                                                                                                                                                                                                [
                                                                                                                                                                                                                                    [
                                                                                                                                                                                                                                        [
                                                                                                                                                                                                                                            [
                                                                                                                                                                                                                                                [
                                                                                                                                                                                                                                                    [
                                                                                                                                                                                                                                                        [
                                                                                                                                                                                                                                                            [
                                                                                                                                                                                                                                                                [
                                                                                                                                                                                                                                                                    [
                                                                                                                                                                                                                                                                        [
                                                                                                                                                                                                                                                                            [
                                                                                                                                                                                                                                                                                [
                                                                                                                                                                                                                                                                                    [
                                                                                                                                                                                                                                                                                        1
                                                                                                                                                                                                                                                                                    ]
                                                                                                                                                                                                                                                                                ]
                                                                                                                                                                                                                                                                            ]
                                                                                                                                                                                                                                                                        ]
                                                                                                                                                                                                                                                                    ]
                                                                                                                                                                                                                                                                ]
                                                                                                                                                                                                                                                            ]
                                                                                                                                                                                                                                                        ]
                                                                                                                                                                                                                                                    ]
                                                                                                                                                                                                                                                ]
                                                                                                                                                                                                                                            ]
                                                                                                                                                                                                                                        ]
                                                                                                                                                                                                                                    ]
                                                                                                                                                                                                                                ]
                                                                                                                                                                                                                            ]
                                                                                                                                                                                                                        ]
                                                                                                                                                                                                                    ]
                                                                                                                                                                                                                ]
                                                                                                                                                                                                            ]
                                                                                                                                                                                                        ]
                                                                                                                                                                                                    ]
                                                                                                                                                                                                ]
                                                                                                                                                                                            ]
                                                                                                                                                                                        ]
                                                                                                                                                                                    ]
                                                                                                                                                                                ]
                                                                                                                                                                            ]
                                                                                                                                                                        ]
                                                                                                                                                                    ]
                                                                                                                                                                ]
                                                                                                                                                            ]
                                                                                                                                                        ]
                                                                                                                                                    ]
                                                                                                                                                ]
                                                                                                                                            ]
                                                                                                                                        ]
                                                                                                                                    ]
                                                                                                                                ]
                                                                                                                            ]
                                                                                                                        ]
                                                                                                                    ]
                                                                                                                ]
                                                                                                            ]
                                                                                                        ]
                                                                                                    ]
                                                                                                ]
                                                                                            ]
                                                                                        ]
                                                                                    ]
                                                                                ]
                                                                            ]
                                                                        ]
                                                                    ]
                                                                ]
                                                            ]
                                                        ]
                                                    ]
                                                ]
                                            ]
                                        ]
                                    ]
                                ]
                            ]
                        ]
                    ]
                ]
            }
        ): "nested too deeply",  # noqa: E501
    }
    for text, expect in cases.items():
        with pytest.raises(InputError) as err:
            inputs.loads_json(text, "x.json")
        assert expect in err.value.message and err.value.message.startswith("x.json: ")


def test_key_file_limits(tmp_path: Path) -> None:
    from kiln.publish import gcs

    for path, expect in ((Path("/dev/zero"), "character device"), (tmp_path, "directory")):
        with pytest.raises(InputError, match=expect):
            gcs.load_key_file(path)
    fifo = tmp_path / "key.fifo"
    os.mkfifo(fifo)
    with pytest.raises(InputError, match="is a FIFO"):  # never hangs
        gcs.load_key_file(fifo)
    huge = tmp_path / "key.json"
    huge.write_text(json.dumps({"private_key": "SECRET" * 20000}))
    with pytest.raises(InputError) as err:
        gcs.load_key_file(huge)
    assert "limit 64 KB" in err.value.message and "SECRET" not in err.value.message


# --- var files and -var values ----------------------------------------------------------------------------


def test_bad_var_files_are_config_errors_naming_the_file(tmp_path: Path) -> None:
    cases: dict[str, tuple[bytes | str, str]] = {
        "latin1.json": (b'{"os_version": "\xe9"}', "is not UTF-8"),
        "surrogate.json": ('{"os_version": "\\udc80"}', "lone UTF-16 surrogate"),
        "deep.json": ("[" * 100_000, "nested too deeply"),
        "bigint.json": ('{"cpus": ' + "9" * 5000 + "}", "5000-digit integer"),
        "list.json": ("[1, 2]", "must hold a JSON object of settings"),
        "dup.pkrvars.hcl": (
            "cpus = 2\nmemory = 4096\ncpus = 4\n",
            "line 3: cpus: set twice (first on line 1)",
        ),
    }
    for name, (text, expect) in cases.items():
        problems = load_problems(text, tmp_path, name)
        assert any(p.startswith(str(tmp_path / name)) and expect in p for p in problems), (name, problems)


def test_var_file_paths_that_are_not_files(tmp_path: Path) -> None:
    fifo = tmp_path / "vars.fifo"
    os.mkfifo(fifo)
    loop = tmp_path / "loop.json"
    loop.symlink_to(loop)
    for path, expect in (
        (fifo, "is a FIFO"),
        (tmp_path, "is a directory"),
        (Path("/dev/zero"), "is a character device"),
        (loop, "cannot be opened"),
        (tmp_path / ("v" * 300 + ".json"), "cannot be opened"),
        (tmp_path / "nope.json", "var file not found"),
    ):
        with pytest.raises(ConfigError) as err:
            config.load("debian-12", var_files=[path], repo_root=REPO)
        assert expect in "\n".join(err.value.problems), (path, err.value.problems)


BAD_VALUES = {
    "iso_url": ["http://", "https:///x", "http://host:99999/x", "http://[::1/x", "http://h/x\n", "ftp://h/x"],
    "iso_checksum": ["sha256:abc", "md5:" + "0" * 64, "file:", "sha256:" + "0" * 64 + "\n", "sha3:00"],
    "kubernetes_semver": ["", "v01.30.2", "v1.30.02", "v１.３０.２", "v1.30.2-rc..0", "v1.30.2\n", "1.30.2"],
    "boot_wait": ["10s\n", "１０s", "ten"],
    "ssh_timeout": ["5m\x00"],
    "build_name": ["a\nb", "x/y"],
    "cpus": ["1_000", "10" + "0" * 30, "1000000", "0", "٣"],
    "memory": ["1" + "0" * 30],
    "disk_size": ["1e9"],
    "output_dir": ["", "out\x00put"],
    "no_proxy": ["a\nb"],
    "http_proxy": ["http://proxy:0x50"],
}


@pytest.mark.parametrize("key", sorted(BAD_VALUES))
def test_strict_values_are_refused_naming_origin_and_key(key: str, tmp_path: Path) -> None:
    for raw in BAD_VALUES[key]:
        with pytest.raises(ConfigError) as err:
            config.load("debian-12", overrides={key: raw}, repo_root=REPO)
        assert any(
            p.startswith(f"-var: {key}: ") or p.startswith(f"-var {key}: ") for p in err.value.problems
        ), (
            raw,
            err.value.problems,
        )
        # the same value from a var file names that file
        var = tmp_path / "v.json"
        var.write_text(json.dumps({key: raw}))
        with pytest.raises(ConfigError) as err:
            config.load("debian-12", var_files=[var], repo_root=REPO)
        assert any(p.startswith(f"{var}: {key}: ") for p in err.value.problems), (raw, err.value.problems)


def test_good_values_still_pass() -> None:
    good = {
        "iso_url": "https://releases.example.com:8443/x.iso",
        "iso_checksum": "sha256:" + "a" * 64,
        "kubernetes_semver": "v1.30.2-rc.1+build.5",
        "boot_wait": "1m30s",
        "cpus": "256",
        "http_proxy": "http://10.0.0.1:3128",
    }
    cfg = config.load("debian-12", overrides=good, repo_root=REPO)
    assert cfg["cpus"] == 256 and cfg["kubernetes_series"] == "v1.30"


def test_long_values_are_cut_in_errors() -> None:
    with pytest.raises(ConfigError) as err:
        config.load("debian-12", overrides={"boot_wait": "x" * 10_000_000}, repo_root=REPO)
    assert len(str(err.value)) < 600 and "10000000 characters" in str(err.value)


def test_a_missing_key_names_the_var_file_that_caused_it(tmp_path: Path) -> None:
    var = tmp_path / "src.json"
    var.write_text(json.dumps({"install_method": "cloudimg"}))
    with pytest.raises(ConfigError) as err:
        config.load("debian-12", var_files=[var], repo_root=REPO)
    assert any(p.startswith(f"{var}: cloudimg_url: required") for p in err.value.problems), err.value.problems


# --- targets are names --------------------------------------------------------------------------------------


def test_targets_are_names_not_paths(tmp_path: Path) -> None:
    victim = tmp_path / "victim"
    victim.mkdir()
    (victim / "keep").write_text("mine")
    (tmp_path / "victim.json").write_text((REPO / "config/debian-12.json").read_text())
    for target in (str(victim), "../config/debian-12", "config/debian-12", "x" * 300, "debian-12\n", ""):
        result = run_kiln("render", target, cwd=tmp_path)
        assert result.returncode == 2, (target, result.stderr)
        assert "Traceback" not in result.stderr
    assert (victim / "keep").read_text() == "mine" and os.listdir(victim) == ["keep"]
    assert run_kiln("validate", "nosuchtarget").returncode == 2
    assert run_kiln("config", "../config/debian-12").returncode == 2


# --- never replace what kiln did not make ------------------------------------------------------------------


def test_render_never_replaces_a_foreign_directory(tmp_path: Path) -> None:
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "keep").write_text("mine")
    for out in (str(foreign), "", ".", str(foreign / "keep" / "under-a-file"), "/proc/kiln-test"):
        result = run_kiln("render", "debian-12", "-o", out, cwd=foreign)
        assert result.returncode == 2, (out, result.stdout, result.stderr)
        assert "Traceback" not in result.stderr
    assert sorted(os.listdir(foreign)) == ["keep"], "nothing left behind, nothing removed"
    assert sorted(os.listdir(tmp_path)) == ["foreign"]
    made = tmp_path / "rendered"
    assert run_kiln("render", "debian-12", "-o", str(made)).returncode == 0
    assert (made / inputs.MARKER).is_file()
    assert run_kiln("render", "debian-12", "-o", str(made)).returncode == 0  # its own output: replaced


def test_cidata_never_replaces_a_foreign_file(tmp_path: Path) -> None:
    pub = tmp_path / "k.pub"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(tmp_path / "k")], check=True)
    notes = tmp_path / "notes.txt"
    notes.write_text("mine")
    for out in (str(notes), str(tmp_path), str(notes / "x.iso")):
        result = run_kiln("cidata", "--ssh-public-key", str(pub), "-o", out)
        assert result.returncode == 2 and "Traceback" not in result.stderr, (out, result.stderr)
    assert notes.read_text() == "mine"
    seed = tmp_path / "seed.iso"
    for _ in range(2):  # a seed it wrote is replaced
        assert run_kiln("cidata", "--ssh-public-key", str(pub), "-o", str(seed)).returncode == 0


def test_build_never_replaces_a_foreign_build_dir(tmp_path: Path) -> None:
    from kiln.build import pipeline as build

    cfg = config.load("debian-12", overrides={"output_dir": str(tmp_path)}, repo_root=REPO)
    foreign = tmp_path / cfg.artifact_name
    foreign.mkdir()
    (foreign / "keep").write_text("mine")
    with pytest.raises(InputError, match="was not made by kiln"):
        build.run_build(cfg, runtime=RUNTIME)
    assert os.listdir(foreign) == ["keep"]


def test_no_public_key_material() -> None:
    with pytest.raises(InputError, match="no key material"):
        cidata.parse_public_key("ssh-ed25519 AAAAC3NzaC1lZDI1NTE5", "k.pub")  # the type string only


# --- downloads stay inside -o ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "url",
    [
        "https://h/b/%2e%2e%2fescape.ova",
        "https://h/b/..%2Fescape.ova",
        "https://h/b/a%2Fb.ova",
        "https://h/b/%2e%2e",
        "https://h/b/",
        "https://h:99999/b/x.ova",
        "https:///b/x.ova",
        "https://h/b/%ff.ova",
        "https://h/b/x%00.ova",
        "https://h/b/.hidden",
    ],
)
def test_images_get_refuses_names_that_leave_the_directory(url: str, tmp_path: Path) -> None:
    out = tmp_path / "out"
    with pytest.raises(InputError):
        images.download(url, out)
    assert not out.exists(), "-o is not created for a refused URL"
    assert os.listdir(tmp_path) == []


def test_images_get_cli_exit_2_and_nothing_created(tmp_path: Path) -> None:
    out = tmp_path / "o"
    result = run_kiln("images", "get", "https://h:99999/b/x.ova", "-o", str(out))
    assert result.returncode == 2 and "Traceback" not in result.stderr and not out.exists()


# --- build dirs and boot state ------------------------------------------------------------------------------


def make_build_dir(root: Path) -> Path:
    d = root / "debian-12+kube-v1.30.2"
    d.mkdir()
    custom = {"build_name": "debian-12", "kubernetes_semver": "v1.30.2", "kiln_version": "0.1.0"}
    (d / "packer-manifest.json").write_text(json.dumps({"builds": [{"custom_data": custom}]}))
    return d


def test_malformed_build_dirs_are_input_errors(tmp_path: Path) -> None:
    d = make_build_dir(tmp_path)
    for text in ("[1, 2]", "[" * 100_000, '"x"'):
        (d / "config.json").write_text(text)
        with pytest.raises(InputError, match="config.json"):
            BuildDir.open(d)
    (d / "config.json").unlink()
    (d / "packer-manifest.json").write_text(
        json.dumps({"builds": [{"custom_data": {"build_name": "../x", "kubernetes_semver": "v1"}}]})
    )
    with pytest.raises(InputError, match="not a plain file name"):
        BuildDir.open(d)


def test_boot_state_pointing_elsewhere_is_never_cleaned(tmp_path: Path) -> None:
    d = make_build_dir(tmp_path)
    elsewhere = tmp_path / "precious"
    elsewhere.mkdir()
    (elsewhere / "keep").write_text("mine")
    run = d / ".boot"
    run.mkdir()
    state = {
        "pid": 999_999_999, "ssh_port": 2222, "user": "kiln", "key": "", "qmp_socket": "", "serial_log": "",
        "run_dir": str(elsewhere), "disk": "", "firmware": "bios", "accelerator": "tcg", "detached": True,
        "started": 0.0,
    }  # fmt: skip
    (run / "state.json").write_text(json.dumps(state))
    build = BuildDir.open(d)
    for call in (boot.read_state, boot.stop):
        with pytest.raises(InputError, match="is not .*kiln will not use this boot state"):
            call(build)
    assert (elsewhere / "keep").read_text() == "mine"
    for bad_pid in ("123", 1.5, 10**30, True, -1):
        (run / "state.json").write_text(json.dumps({**state, "run_dir": str(run), "pid": bad_pid}))
        with pytest.raises(InputError, match="state.json: .*boot state"):
            boot.read_state(build)
    result = run_kiln("ssh", str(d))
    assert result.returncode == 2 and "Traceback" not in result.stderr


# --- properties ---------------------------------------------------------------------------------------

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=40),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=10), children, max_size=4)
    ),
    max_leaves=20,
)
keys = st.sampled_from(sorted(BY_NAME) + ["nope", "crictl_version", ""])


@HYPO
@given(st.dictionaries(keys, json_values, max_size=5))
def test_property_var_files_give_a_config_or_a_config_error(tmp_path: Path, data: dict) -> None:
    path = tmp_path / "vars.json"
    path.write_text(json.dumps(data))
    try:
        config.load("debian-12", var_files=[path], repo_root=REPO)
    except ConfigError as err:
        assert err.problems and all(isinstance(p, str) and len(p) < 2000 for p in err.problems)


@HYPO
@given(keys, st.text(max_size=60))
def test_property_overrides_give_a_config_or_a_config_error(key: str, raw: str) -> None:
    try:
        cfg = config.load("debian-12", overrides={key: raw}, repo_root=REPO)
    except ConfigError as err:
        assert err.problems
    else:
        for name, value in cfg.plain().items():
            if isinstance(value, str):  # a multi-line setting (a TOML snippet) may hold line breaks
                text = value.replace("\n", "") if BY_NAME[name].multiline else value
                assert text.isprintable(), (name, value)


@HYPO
@given(st.binary(max_size=300))
def test_property_var_file_bytes_never_raise_anything_else(tmp_path: Path, blob: bytes) -> None:
    for name in ("b.json", "b.pkrvars.hcl"):
        path = tmp_path / name
        path.write_bytes(blob)
        try:
            config.load("debian-12", var_files=[path], repo_root=REPO)
        except ConfigError:
            pass


@HYPO
@given(st.text(max_size=80))
def test_property_download_names_stay_inside_the_directory(tmp_path: Path, segment: str) -> None:
    import urllib.parse

    url = "https://h.example/b/" + urllib.parse.quote(segment, safe="%/.")
    try:
        name = images.file_name_of(url)
    except InputError:
        return
    target = (tmp_path / name).resolve()
    assert target.parent == tmp_path.resolve() and "/" not in name


@settings(max_examples=40, deadline=None)
@given(st.text(max_size=40), st.text(max_size=40))
def test_property_cli_exits_0_or_2(target: str, value: str) -> None:
    """In process: any target name and any -var value ends in exit 0 or 2, never a traceback."""
    for argv in (["config", target], ["config", "debian-12", "--var", f"cpus={value}"]):
        try:
            code = cli.main(argv)
        except SystemExit as exc:  # argparse refusing an argument is exit 2 as well
            code = int(exc.code or 0)
        assert code in (0, 2), argv
