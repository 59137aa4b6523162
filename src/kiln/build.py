"""The build pipeline: base stage, provisioning with Packer, post-processing, verification, atomic publish.

    result = run_build(cfg)            # cfg: a kiln.config.Config
    result.path                        # packer/output/BUILD_NAME+kube-SEMVER/

Stages (printed on the terminal as they start; everything else goes to build.log):
  base        install_method bootstrap: the cached base disk (kiln.bootstrap); reused when inputs match
  provision   a per-build ed25519 key and cloud-init seed, then `packer build` (qemu builder on a copy of
              the base; Ansible playbook, in-guest goss check, sysprep playbook)
  qcow2       compressed qcow2 + sha256
  ova         OVF + stream-optimized VMDK + .mf, as a tar (kiln.ova) + sha256
  manifest    packer-manifest.json custom_data, config.json
  verify      `kiln verify` on the finished image (when kiln.verify is installed)
  publish     rename the temp dir into place

Failure safety: everything happens in `OUTPUT_DIR/.NAME.tmp-XXXX`; the final directory appears only after
every stage succeeded (an older build of the same name is replaced only then). On failure or Ctrl-C the temp
dir is removed, the log is kept in `OUTPUT_DIR/logs/` and its path is printed. The build's SSH key lives
in the temp dir only and is deleted on every path.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import shutil
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from . import __version__, bootstrap, builddir, cidata, inputs, ova, packer, proc
from .errors import BuildError, InputError, KilnError

log = logging.getLogger(__name__)

STAGES = ("base", "provision", "qcow2", "ova", "manifest", "verify", "publish")
SERIAL_LOG = "build-serial.log"
FINALIZE_COMMAND = "sudo /usr/local/sbin/kiln-finalize"  # written by the sysprep role; Packer's shutdown


@dataclass
class BuildResult:
    path: Path
    name: str
    stages: dict[str, float]  # stage -> wall seconds
    base_cached: bool | None  # None when there is no base stage
    input_hash: str
    up_to_date: bool = False

    def __str__(self) -> str:
        return str(self.path)


class Reporter:
    """Shows the current stage on the terminal; writes everything to the build log."""

    def __init__(self, log_file: IO[str], say: Callable[[str], None]) -> None:
        self.log_file = log_file
        self._say = say
        self.stages: dict[str, float] = {}

    def say(self, text: str) -> None:
        self._say(text)
        self.note(text)

    def note(self, text: str) -> None:
        self.log_file.write(f"kiln: {text}\n")
        self.log_file.flush()

    @contextmanager
    def stage(self, name: str, what: str) -> Iterator[None]:
        number = STAGES.index(name) + 1
        self.say(f"==> [{number}/{len(STAGES)}] {name}: {what}")
        started = time.monotonic()
        try:
            yield
        finally:
            took = time.monotonic() - started
            self.stages[name] = round(took, 1)
            self.note(f"stage {name} took {took:.1f}s")


def _default_say(text: str) -> None:
    print(text, flush=True)


def required_tools(values: Mapping[str, Any]) -> list[str]:
    tools = ["packer", "qemu-system-x86_64", "qemu-img", "ansible-playbook"]
    if values.get("install_method") == "bootstrap":
        tools += ["mmdebstrap", "sfdisk", "mkfs.fat", "mkfs.ext4"]
    return tools


def check_tools(values: Mapping[str, Any]) -> None:
    """ToolMissingError (exit 2) naming the package for the first missing program."""
    for tool in required_tools(values):
        if tool == "ansible-playbook" and shutil.which(tool, path=tool_path()):
            continue  # Packer runs it from kiln's virtualenv (tool_path)
        proc.which(tool)


def tool_path() -> str:
    """PATH for Packer: the running Python's bin dir first, so Packer finds .venv's ansible-playbook."""
    return os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "/usr/bin:/bin")])


def cloud_config(username: str, public_key: str) -> str:
    """user-data for the build VM: the build user with the per-build key, sudo, no password at all."""
    doc = {
        "users": [
            {
                "name": username,
                "groups": ["sudo"],
                "shell": "/bin/bash",
                "sudo": "ALL=(ALL) NOPASSWD:ALL",
                "lock_passwd": True,
                "ssh_authorized_keys": [public_key],
            }
        ],
        "ssh_pwauth": False,
        "disable_root": True,
        "growpart": {"mode": "auto", "devices": ["/"]},
    }
    return "#cloud-config\n" + json.dumps(doc, indent=2) + "\n"


def write_seed(path: Path, username: str, public_key: str, instance_id: str) -> Path:
    # hostname localhost: resolvable without touching /etc/hosts, and nothing build-specific left behind
    meta = f"instance-id: {instance_id}\nlocal-hostname: localhost\n"
    return cidata.write_iso(path, {"user-data": cloud_config(username, public_key), "meta-data": meta})


def sha256_file(path: Path, chunk: int = 8 * 1024 * 1024) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def write_sha256(path: Path) -> str:
    digest = sha256_file(path)
    Path(f"{path}.sha256").write_text(digest)  # bare hex, as image-builder writes it
    return digest


def custom_data(values: Mapping[str, Any], input_hash: str) -> dict[str, str]:
    """kiln's provenance in packer-manifest.json builds[-1].custom_data (strings, as Packer writes them)."""
    return {
        "build_name": str(values["build_name"]),
        "kubernetes_semver": str(values["kubernetes_semver"]),
        "os_name": str(values.get("os_name", "")),
        "os_version": str(values.get("os_version", "")),
        "firmware": str(values.get("firmware", "bios")),
        "kiln_version": __version__,
        "input_hash": input_hash,
        "ssh_username": str(values.get("ssh_username", "builder")),
    }


def write_manifest(path: Path, name: str, files: list[Path], data: dict[str, str], builder: str) -> None:
    """Merge kiln's custom_data and the final artifact list into Packer's manifest (or write one).

    Keeps Packer's own fields (builder_type, packer_run_uuid, build_time) when the post-processor wrote them.
    """
    manifest: dict[str, Any] = {"builds": [], "last_run_uuid": ""}
    if path.is_file():
        try:
            manifest = json.loads(path.read_text())
        except ValueError:
            log.warning("%s: unreadable Packer manifest, rewriting it", path)
    builds = manifest.setdefault("builds", [])
    if not builds:
        run_uuid = str(uuid.uuid4())
        builds.append(
            {
                "name": name,
                "builder_type": builder,
                "build_time": int(time.time()),
                "packer_run_uuid": run_uuid,
            }
        )
        manifest["last_run_uuid"] = run_uuid
    last = builds[-1]
    last["files"] = [{"name": f.name, "size": f.stat().st_size} for f in files]
    last["artifact_id"] = name
    merged = dict(last.get("custom_data") or {})
    merged.update(data)
    last["custom_data"] = merged
    path.write_text(json.dumps(manifest, indent=2) + "\n")


def ansible_vars(values: Mapping[str, Any], extra: Mapping[str, Any]) -> dict[str, Any]:
    out = {k: v for k, v in values.items()}
    out.update(extra)
    return out


def _render(cfg: Any, ctx: Any, dest: Path) -> Path:
    """The rendered Packer template dir for this build (kiln.render owns the templates)."""
    from . import render

    return Path(render.render(cfg, ctx, dest).dir)


def run_build(
    cfg: Any,
    *,
    only: str | None = None,
    say: Callable[[str], None] | None = None,
    debug: bool = False,
    verify: bool = True,
    force: bool = False,
) -> BuildResult:
    """Build the image described by `cfg` (a kiln.config.Config) and publish it into its build directory.

    When the build directory already holds a verified build with the same input hash, nothing runs and
    nothing is touched (`up_to_date` is True), unless `force`.
    """
    values: Mapping[str, Any] = cfg.values
    repo_root: Path = cfg.repo_root
    name = builddir.artifact_name(values["build_name"], values["kubernetes_semver"])
    final = cfg.path("output_dir") / name
    say_fn = say or _default_say
    input_hash = cfg.input_hash()
    if not force and up_to_date(final, input_hash):
        say_fn(f"kiln: {final} is up to date (input hash {input_hash[:12]}); --force rebuilds")
        return BuildResult(final, name, {}, None, input_hash, up_to_date=True)
    check_replaceable_build(final)
    out_root = proc.ensure_dir(cfg.path("output_dir"))

    check_tools(values)
    from .vm import free_port, pick_accelerator

    accelerator = pick_accelerator(str(values.get("accelerator", "auto")))

    temp = Path(tempfile.mkdtemp(prefix=f".{name}.tmp-", dir=out_root))
    log_path = temp / builddir.LOG
    # append mode: kiln.packer.build appends Packer's output through its own handle to the same file
    log_file = open(log_path, "a", buffering=1)  # noqa: SIM115 - closed in finally
    rep = Reporter(log_file, say_fn)
    base_cached: bool | None = None
    ok = False
    try:
        rep.say(f"kiln {__version__}: building {name} ({values['install_method']}, {accelerator}) in {temp}")
        rep.note(f"input hash {input_hash}")
        rep.note("config: " + json.dumps(cfg.plain(), sort_keys=True))
        work = temp / "work"
        work.mkdir(mode=0o700)

        base: bootstrap.BaseImage | None = None
        with rep.stage("base", "base disk"):
            if values["install_method"] == "bootstrap":
                spec = bootstrap.spec_from_config(cfg, repo_root)
                base = bootstrap.ensure_base(
                    spec,
                    cfg.path("cache_dir"),
                    repo_root,
                    accelerator=accelerator,
                    log_file=log_file,
                    say=lambda t: rep.say(f"    {t}"),
                )
                base_cached = base.cached
            else:
                rep.say(f"    install_method {values['install_method']}: Packer installs the OS itself")

        plan = _plan(cfg, name, temp, work, base, accelerator, free_port())
        with rep.stage("provision", f"packer build ({accelerator}; Ansible playbook, goss check, sysprep)"):
            rendered = _render(cfg, plan.context, work / "packer")
            rep.note(f"rendered template: {rendered}")
            log_file.flush()
            packer.build(
                rendered,
                log_path,
                only=[only] if only else [],
                debug=debug,
                on_stage=lambda line: rep._say(f"    {line}"),
            )
            disk = plan.packer_output / f"{name}.qcow2"
            if not disk.is_file():
                raise BuildError(f"{plan.packer_output}: Packer finished but wrote no {disk.name}")
            if not plan.packages_file.is_file():
                raise BuildError(f"{plan.packages_file}: the provision playbook wrote no package list")

        qcow2 = temp / f"{name}.qcow2"
        with rep.stage("qcow2", "compressed qcow2 + sha256"):
            if _packer_compressed(rendered):
                os.rename(disk, qcow2)  # Packer's disk_compression already did it
            else:
                proc.run(
                    ["qemu-img", "convert", "-c", "-O", "qcow2", str(disk), str(qcow2)], log_file=log_file
                )
            shutil.rmtree(plan.packer_output)
            write_sha256(qcow2)

        ova_path = temp / f"{name}.ova"
        with rep.stage("ova", "OVF + stream-optimized VMDK + manifest"):
            ova.build_ova(qcow2, ova_path, name, values, log_file=log_file)
            write_sha256(ova_path)

        with rep.stage("manifest", "packer-manifest.json, config.json"):
            files = [qcow2, ova_path, plan.packages_file]
            data = custom_data(values, input_hash)
            write_manifest(temp / builddir.MANIFEST, name, files, data, str(values.get("builder", "qemu")))
            (temp / builddir.CONFIG).write_text(json.dumps(cfg.to_json(), indent=2, sort_keys=True) + "\n")
            shutil.rmtree(work)  # the build key, seed and vars go now, before anything can copy them
            (temp / SERIAL_LOG).unlink(missing_ok=True)
            builddir.BuildDir.open(temp)  # the contract other commands read

        with rep.stage("verify", "kiln verify (goss specs against a boot of the finished image)"):
            _verify(temp, rep, verify, accelerator)

        with rep.stage("publish", str(final)):
            temp.chmod(0o755)  # mkdtemp made it private; the published build is readable like its files
            inputs.mark(temp, f"kiln build of {name}")
            _publish(temp, final)
        ok = True
        rep.note("stages: " + json.dumps(rep.stages))
        rep.say(f"kiln: built {final} in {sum(rep.stages.values()):.0f}s " + _stage_summary(rep.stages))
        return BuildResult(final, name, dict(rep.stages), base_cached, input_hash)
    except BaseException as exc:
        log_file.write(f"kiln: build failed: {exc!r}\n")
        log_file.flush()
        kept = _keep_log(log_path, out_root, name)
        if kept is not None:
            say_fn(f"kiln: build failed; the whole log is kept at {kept}")
            if isinstance(exc, KilnError):  # the temp dir goes away: point at the kept copies instead
                goss_kept = kept.with_suffix(".goss")
                exc.message = exc.message.replace(str(temp / "goss"), str(goss_kept))
                exc.message = exc.message.replace(str(log_path), str(kept))
                exc.args = (exc.message,)
                hint = (exc.hint or "").replace(str(log_path), str(kept))
                exc.hint = hint if str(kept) in hint else (hint + "; " if hint else "") + f"build log: {kept}"
        raise
    finally:
        log_file.close()
        if ok:
            pass
        else:
            shutil.rmtree(temp, ignore_errors=True)


def up_to_date(final: Path, input_hash: str) -> bool:
    """`final` is a kiln build dir, verified, whose manifest records `input_hash`, with its artifacts there.
    Reads only; any doubt means "not up to date"."""
    if not (final / inputs.MARKER).is_file() or not (final / "goss" / "report.json").is_file():
        return False
    try:
        build = builddir.BuildDir.open(final)
    except KilnError:
        return False
    if build.custom_data.get("input_hash") != input_hash:
        return False
    listed = [f.get("name") for f in _manifest_files(final)]
    return bool(listed) and all(isinstance(n, str) and (final / n).is_file() for n in listed)


def _manifest_files(final: Path) -> list[dict[str, Any]]:
    try:
        manifest = inputs.read_json_object(final / builddir.MANIFEST, "Packer manifest")
        files = manifest["builds"][-1]["files"]
    except (KilnError, KeyError, IndexError, TypeError):
        return []
    return [f for f in files if isinstance(f, dict)] if isinstance(files, list) else []


def check_replaceable_build(final: Path) -> None:
    """kiln replaces a build dir only if it made it: its marker, or (builds from before the marker) a
    packer-manifest.json whose custom_data carries kiln_version. Anything else: InputError, exit 2."""
    if not final.exists() and not final.is_symlink():
        return
    if final.is_dir() and not final.is_symlink():
        if (final / inputs.MARKER).is_file():
            return
        try:
            if builddir.BuildDir.open(final).custom_data.get("kiln_version"):
                return
        except KilnError:
            pass
    raise InputError(
        f"{final}: exists and was not made by kiln (no {inputs.MARKER} marker); kiln will not replace it",
        hint="move it away, or set output_dir to another directory",
    )


def _stage_summary(stages: Mapping[str, float]) -> str:
    return "(" + ", ".join(f"{k} {v:.0f}s" for k, v in stages.items()) + ")"


@dataclass
class _Plan:
    context: Any  # kiln.render.BuildContext
    packer_output: Path
    packages_file: Path


def _plan(
    cfg: Any,
    name: str,
    temp: Path,
    work: Path,
    base: bootstrap.BaseImage | None,
    accelerator: str,
    ssh_port: int,
) -> _Plan:
    """The per-build key and seed, and the render context (kiln.render.BuildContext) pointing at them."""
    import dataclasses

    from . import render
    from .ssh import generate_keypair

    values: Mapping[str, Any] = cfg.values
    repo_root: Path = cfg.repo_root
    keys = generate_keypair(work / "key", comment=f"kiln-build-{name}")
    seed = write_seed(
        work / "seed.iso",
        str(values["ssh_username"]),
        keys.public_line,
        f"kiln-build-{uuid.uuid4().hex[:12]}",
    )
    packages_file = temp / f"{name}.packages"
    packer_output = temp / "packer-output"
    wanted: dict[str, Any] = {
        "ssh_private_key_file": keys.private_key,
        "ssh_public_key": keys.public_line,
        "password_hash": "",  # bootstrap and cloudimg log in with the key only
        "ssh_port": ssh_port,
        "output_dir": packer_output,
        "manifest_path": temp / builddir.MANIFEST,
        "accelerator": accelerator,
        "base_disk": base.disk if base is not None else None,
        "base_disk_checksum": "none",
        "seed_iso": seed,
        "playbook": repo_root / "ansible" / "playbook.yml",
        "sysprep_playbook": repo_root / "ansible" / "sysprep.yml",
        "shutdown_command": FINALIZE_COMMAND,
        "extra_vars": {"kiln_packages_file": str(packages_file)},
        "ansible_config": repo_root / "ansible" / "ansible.cfg",
        "serial_log": temp / SERIAL_LOG,  # the build VM's console: kept with the log when a build fails
        "kiln_command": [sys.executable, "-m", "kiln"],
    }
    if values.get("install_method") != "bootstrap":
        wanted["password_hash"] = render.random_password_hash()
    known = {f.name for f in dataclasses.fields(render.BuildContext)}
    missing = sorted(k for k in ("sysprep_playbook", "shutdown_command", "extra_vars") if k not in known)
    if missing:
        log.warning("kiln.render.BuildContext lacks %s; the template may not pass them", ", ".join(missing))
    context = render.BuildContext(**{k: v for k, v in wanted.items() if k in known})
    return _Plan(context, packer_output, packages_file)


def _packer_compressed(rendered: Path) -> bool:
    """True when the rendered template has Packer compress the qcow2 itself (disk_compression = true)."""
    template = rendered / "node.pkr.hcl"
    text = template.read_text() if template.is_file() else ""
    return re.search(r"^\s*disk_compression\s*=\s*true\b", text, re.MULTILINE) is not None


def _verify(temp: Path, rep: Reporter, enabled: bool, accelerator: str) -> None:
    if not enabled:
        rep.say("    skipped (--no-verify)")
        return
    try:
        from .verify import verify_build
    except ImportError:
        rep.say("    kiln.verify is not installed; skipped")
        return
    results = verify_build(
        temp, log_file=rep.log_file, say=lambda t: rep.say(f"    {t}"), accelerator=accelerator
    )
    rep.say(f"    {len(results)} checks passed; reports in goss/")


def _publish(temp: Path, final: Path) -> None:
    """Rename temp into place; an older build of the same name is replaced only now."""
    old: Path | None = None
    if final.exists():
        old = final.with_name(f".{final.name}.old-{uuid.uuid4().hex[:8]}")
        os.rename(final, old)
    try:
        os.rename(temp, final)
    except OSError:
        if old is not None:
            os.rename(old, final)
        raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def _keep_log(log_path: Path, out_root: Path, name: str) -> Path | None:
    if not log_path.is_file():
        return None
    logs = out_root / "logs"
    logs.mkdir(exist_ok=True)
    stamp = time.strftime("%Y%m%dT%H%M%S")
    kept = logs / f"{name}-{stamp}.log"
    shutil.copy2(log_path, kept)
    serial = log_path.parent / SERIAL_LOG
    if serial.is_file():
        shutil.copy2(serial, logs / f"{name}-{stamp}.serial.log")
    reports = log_path.parent / "goss"
    if reports.is_dir():  # a failed verify: its reports outlive the temp dir
        shutil.copytree(reports, logs / f"{name}-{stamp}.goss")
    return kept
