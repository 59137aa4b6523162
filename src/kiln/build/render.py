"""Render a target's Packer HCL2 template and boot files from the resolved config.

`render(config, context, out_dir)` writes, atomically (temp dir + rename, nothing left on failure):

  OUT/node.pkr.hcl        the Packer template (qemu and/or vmware-iso sources, ansible, goss hook, manifest)
  OUT/http/...            the boot files (preseed, autoinstall, kickstart, cloud-init seed), rendered with
                          this build's SSH public key and password hash
  OUT/config.json         Config.to_json(): what `kiln goss-check --config` and the build dir read
  OUT/ansible-vars.json   the config values as Ansible extra vars

The template depends on the Packer version: >= 1.7 needs `packer { required_plugins {...} }` (and
`packer init`), which 1.6.6 rejects; `packer_version` picks the form (detected by kiln.build.packer).
"""

from __future__ import annotations

import json
import os
import re
import secrets
import shlex
import shutil
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import jinja2

from kiln import __version__
from kiln.build import stages
from kiln.config import Config
from kiln.core import inputs, proc, tempdirs
from kiln.core.errors import InputError
from kiln.core.runtime import Runtime
from kiln.vm.accel import cpu_model

TEMPLATE = "node.pkr.hcl.j2"
TEMPLATE_OUT = "node.pkr.hcl"
MODERN = (1, 7, 0)
OVMF = "/usr/share/ovmf/OVMF.fd"
# The kernel command line when a bootstrap build boots an extracted kernel (the build passes its own root=).
DEFAULT_KERNEL_CMDLINE = "ro console=ttyS0,115200n8"


@dataclass(frozen=True)
class BuildContext:
    """What a build (or a placeholder for render/validate) supplies besides the config."""

    ssh_private_key_file: Path
    ssh_public_key: str
    ssh_port: int
    output_dir: Path  # packer output_directory for qemu; must not exist before the build
    manifest_path: Path
    password_hash: str = ""  # installers need one: "" -> a random one is made at render time
    vmware_output_dir: Path | None = None  # defaults to output_dir + "-vmware"
    accelerator: str = "tcg"  # resolved: kvm or tcg
    base_disk: Path | None = None  # bootstrap: the base disk (qcow2) Packer copies
    base_disk_checksum: str = "none"
    kernel: Path | None = None  # bootstrap: kernel/initrd extracted beside the base disk
    initrd: Path | None = None
    kernel_cmdline: str = DEFAULT_KERNEL_CMDLINE
    seed_iso: Path | None = None  # bootstrap: cloud-init NoCloud seed with the build user's key
    playbook: Path | None = None  # default: REPO/ansible/playbook.yml
    sysprep_playbook: Path | None = None  # default: REPO/ansible/sysprep.yml
    shutdown_command: str = "sudo shutdown -P now"
    extra_vars: Mapping[str, Any] = field(default_factory=dict)  # added to ansible-vars.json
    ansible_vars_file: Path | None = None  # use this extra-vars file instead of OUT/ansible-vars.json
    ansible_config: Path | None = None  # ANSIBLE_CONFIG for the provisioners
    vm_name: str | None = None  # qemu disk file name (default NAME.qcow2)
    serial_log: Path | None = None  # qemu -serial file:PATH
    custom_data: Mapping[str, str] = field(default_factory=dict)  # merged over kiln's manifest custom_data
    # argv prefix up to and including "goss-check" (default: this python -m kiln goss-check); kiln appends
    # --host/--port/--user/--key/--config/--phase build
    goss_check_command: Sequence[str] = ()
    goss_check: bool = True
    goss_running_only: bool = False  # --running-only: the disk is checked at rest after shutdown (runners)
    kiln_command: Sequence[str] = field(default_factory=lambda: [sys.executable, "-m", "kiln"])
    extra_qemuargs: Sequence[Sequence[str]] = ()
    # build stages: boot the parent stage's disk through a qcow2 overlay (Packer's use_backing_file) and
    # leave the result uncompressed, so that the stage's disk holds only what the stage changed
    use_backing_file: bool = False
    compress: bool = True
    sysprep: bool = True  # run ansible/sysprep.yml (the last stage of a build); False for the os stage


@dataclass(frozen=True)
class Output:
    """What one builder leaves behind: the disk file, its format, and whether Packer compressed it."""

    disk: Path
    format: str  # qcow2 | vmdk
    compressed: bool


@dataclass(frozen=True)
class Rendered:
    dir: Path
    template: Path
    packer_version: tuple[int, int, int]
    sources: tuple[str, ...]
    outputs: Mapping[str, Output] = field(default_factory=dict)  # builder -> its output disk

    def __fspath__(self) -> str:  # Path(render(...)) is the template
        return str(self.template)


class _Raw(str):
    """A string already escaped for HCL (may hold ${build.X} interpolations)."""


def escape(text: str) -> str:
    """Quote a Python string as an HCL2 string literal (no interpolation: ${ and %{ are escaped)."""
    out = json.dumps(text, ensure_ascii=False)
    return out.replace("${", "$${").replace("%{", "%%{")


def _key(name: str) -> str:
    return name if re.match(r"^[A-Za-z_][A-Za-z0-9_-]*$", name) else escape(name)


def hcl(value: Any, indent: int = 0) -> str:
    """A Python value as an HCL2 expression. Lists of scalars stay on one line unless `indent` is given."""
    pad = " " * indent
    if isinstance(value, _Raw):
        return f'"{value}"'
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return str(value)
    if isinstance(value, str | os.PathLike):
        return escape(os.fspath(value))
    if isinstance(value, Mapping):
        if not value:
            return "{}"
        inner = " " * (indent + 2)
        lines = [f"{inner}{_key(str(k))} = {hcl(v, indent + 2)}" for k, v in value.items()]
        return "{\n" + "\n".join(lines) + f"\n{pad}}}"
    if isinstance(value, list | tuple):
        items = [hcl(v, indent + 2) if isinstance(v, Mapping) else hcl(v) for v in value]
        if not indent or not items:
            return "[" + ", ".join(items) + "]"
        inner = " " * (indent + 2)
        return "[\n" + ",\n".join(f"{inner}{i}" for i in items) + f"\n{pad}]"
    if value is None:
        return "null"
    raise TypeError(f"cannot render {type(value).__name__} as HCL")


SOURCE_NAME = "node"  # the Packer source's name: Packer's Ansible provisioner passes it as packer_build_name


def _source_ref(builder: str) -> str:
    return f"source.{builder}.{SOURCE_NAME}"


def environment(repo_root: Path) -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(str(repo_root / "packer" / "templates")),
        undefined=jinja2.StrictUndefined,
        keep_trailing_newline=True,
        autoescape=False,
    )
    env.filters["hcl"] = hcl
    env.filters["source_ref"] = _source_ref
    return env


def sources_for(config: Config) -> tuple[str, ...]:
    """The Packer sources a target can build: installer targets both, cloudimg/bootstrap qemu only."""
    if config.get("install_method") == "installer":
        return ("qemu", "vmware-iso")
    return ("qemu",)


def parse_version(text: str) -> tuple[int, int, int]:
    match = re.search(r"(\d+)\.(\d+)\.(\d+)", text)
    if not match:
        raise InputError(f"packer version: cannot parse {text!r}")
    return (int(match.group(1)), int(match.group(2)), int(match.group(3)))


def _boot_vars(config: Config, context: BuildContext) -> dict[str, Any]:
    data = config.plain()
    data.update(ssh_public_key=context.ssh_public_key.strip(), password_hash=context.password_hash)
    return data


def render_boot_files(config: Config, context: BuildContext, http_dir: Path) -> list[Path]:
    """Render each boot file (jinja2, strict) from packer/http/ into http_dir; returns the written paths."""
    src_root = config.repo_root / "packer" / "http"
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(str(src_root)),
        undefined=jinja2.StrictUndefined,
        keep_trailing_newline=True,
    )
    variables = _boot_vars(config, context)
    written = []
    for name in config.get("boot_files"):
        try:
            text = env.get_template(name).render(variables)
        except jinja2.TemplateError as exc:
            line = getattr(exc, "lineno", None)
            where = f":{line}" if line else ""
            raise InputError(f"packer/http/{name}{where}: cannot render boot file: {exc}") from exc
        dest = http_dir / name
        dest.parent.mkdir(parents=True, exist_ok=True)
        dest.write_text(text)
        written.append(dest)
    return written


def template_vars(
    config: Config, context: BuildContext, render_dir: Path, packer_version: tuple[int, int, int]
) -> dict[str, Any]:
    c = config.plain()
    playbook = context.playbook or (config.repo_root / "ansible" / "playbook.yml")
    context = replace(
        context,
        playbook=playbook,
        sysprep_playbook=context.sysprep_playbook or (config.repo_root / "ansible" / "sysprep.yml"),
        vmware_output_dir=context.vmware_output_dir or Path(f"{context.output_dir}-vmware"),
    )
    http_dir = render_dir / "http"
    qemuargs: list[list[str]] = [["-cpu", cpu_model(context.accelerator)]]  # the guest CPU kiln boots
    if c["firmware"] == "efi" and c["efi_firmware_vars"]:  # a code/vars pair: pflash, vars copied per build
        vars_copy = render_dir / "efi_vars.fd"
        qemuargs += [
            ["-drive", f"if=pflash,format=raw,unit=0,readonly=on,file={c['efi_firmware_code']}"],
            ["-drive", f"if=pflash,format=raw,unit=1,file={vars_copy}"],
        ]
    elif c["firmware"] == "efi":
        qemuargs.append(["-bios", c["efi_firmware_code"] or OVMF])
    if c["install_method"] == "cloudimg" and context.base_disk is not None:  # a stage on the cached image
        if context.seed_iso is None:
            raise InputError(f"{config.target}: a cloudimg stage needs the build context's seed_iso")
        qemuargs.append(["-cdrom", str(context.seed_iso)])
    if c["install_method"] == "bootstrap":
        for what in ("base_disk", "seed_iso"):
            if getattr(context, what) is None:
                raise InputError(
                    f"{config.target}: install_method bootstrap needs the build context's {what}"
                )
        if context.kernel is not None:  # first boot with the extracted kernel (else the disk's own GRUB)
            qemuargs += [["-kernel", str(context.kernel)], ["-append", context.kernel_cmdline]]
            if context.initrd is not None:
                qemuargs.append(["-initrd", str(context.initrd)])
        qemuargs.append(["-cdrom", str(context.seed_iso)])
    if context.serial_log is not None:
        qemuargs.append(["-serial", f"file:{context.serial_log}"])
    # Packer forwards the SSH port on every host address (hostfwd=tcp::PORT-:22); the port is fixed, so
    # replace its user-mode netdev with one that listens on loopback only (same id as Packer's -device)
    qemuargs.append(["-netdev", f"user,id=user.0,hostfwd=tcp:127.0.0.1:{context.ssh_port}-:22"])
    qemuargs += [list(a) for a in context.extra_qemuargs]
    seed_files = (
        [str(http_dir / name) for name in c["boot_files"]] if c["install_method"] == "cloudimg" else []
    )
    ansible_args = [
        "--extra-vars",
        f"@{context.ansible_vars_file or render_dir / 'ansible-vars.json'}",
    ]
    if c.get("ansible_user_vars"):  # image-builder's `key=value ...` (or JSON), after kiln's own vars
        ansible_args += ["--extra-vars", str(c["ansible_user_vars"])]
    ansible_env = ["ANSIBLE_HOST_KEY_CHECKING=False", "ANSIBLE_NOCOLOR=True", "ANSIBLE_SSH_RETRIES=3"]
    ansible_config = context.ansible_config or config.repo_root / "ansible" / "ansible.cfg"
    if ansible_config.is_file():  # Packer runs ansible-playbook from the render dir: point it at kiln's cfg
        ansible_env.append(f"ANSIBLE_CONFIG={ansible_config}")
    prefix = list(context.goss_check_command) or [*context.kiln_command, "goss-check"]
    kiln = " ".join(shlex.quote(part) for part in prefix)
    static = (
        f"{kiln} --host ${{build.Host}} --port ${{build.Port}} --user ${{build.User}} "
        f"--key {shlex.quote(str(context.ssh_private_key_file))} "
        f"--config {shlex.quote(str(render_dir / 'config.json'))} --phase build"
        + (" --running-only" if context.goss_running_only else "")
    )
    # escape everything but the three ${build.X} interpolations
    goss_command = _Raw(
        json.dumps(static, ensure_ascii=False)[1:-1]
        .replace("%{", "%%{")
        .replace("${build.", "\x00")
        .replace("${", "$${")
        .replace("\x00", "${build.")
    )
    vmx_data: dict[str, str] = {"ethernet0.pciSlotNumber": "32"}
    if c["firmware"] == "efi":
        vmx_data["firmware"] = "efi"
    # kiln's provenance is written once, by the build (kiln.core.builddir.custom_data); Packer's own manifest
    # of a stage run carries only what the caller passes
    custom_data = dict(context.custom_data)
    return {
        "c": c,
        "ctx": context,
        "kiln_version": __version__,
        "packer_version": ".".join(map(str, packer_version)),
        "modern": packer_version >= MODERN,
        "sources": sources_for(config),
        "artifact_name": config.artifact_name,
        "qemu_vm_name": context.vm_name or f"{config.artifact_name}.qcow2",
        "http_dir": http_dir,
        "render_dir": render_dir,
        "qemuargs": qemuargs,
        "seed_files": seed_files,
        "ansible_args": ansible_args,
        "ansible_env": ansible_env,
        "goss_command": goss_command,
        "vmx_data": vmx_data,
        "custom_data": custom_data,
        "shutdown_command": context.shutdown_command,
    }


# the user's goss files, which `kiln goss-check` opens from Packer's working directory (the render dir)
_USER_GOSS_PATHS = ("goss_spec_dir", "goss_vars_file")


def _for_goss_check(config: Config) -> dict[str, dict[str, Any]]:
    """Config.to_json() with the user's relative goss paths made absolute against the work root, so that
    `kiln goss-check`, run by Packer from the render dir, opens the files the stage IDs hashed."""
    data = config.to_json()
    for key in _USER_GOSS_PATHS:
        raw = str(data[key]["value"] or "")
        if raw and not Path(raw).is_absolute():
            data[key]["value"] = str(config.work_root / raw)
    return data


def render_template(
    config: Config, context: BuildContext, render_dir: Path, packer_version: tuple[int, int, int]
) -> str:
    """The HCL text of the target's template (no files written)."""
    env = environment(config.repo_root)
    try:
        return env.get_template(TEMPLATE).render(template_vars(config, context, render_dir, packer_version))
    except jinja2.TemplateError as exc:
        line = getattr(exc, "lineno", None)
        raise InputError(
            f"packer/templates: cannot render{f' (line {line})' if line else ''}: {exc}"
        ) from exc


def outputs(config: Config, context: BuildContext) -> dict[str, Output]:
    """Where each builder of `config` writes its disk (the qemu template compresses with Packer's
    disk_compression; vmware-iso writes an uncompressed disk.vmdk in its own output directory)."""
    facts = {
        "qemu": Output(
            context.output_dir / (context.vm_name or f"{config.artifact_name}.qcow2"), "qcow2", True
        ),
        "vmware-iso": Output(
            (context.vmware_output_dir or Path(f"{context.output_dir}-vmware")) / "disk.vmdk", "vmdk", False
        ),
    }
    return {b: facts[b] for b in sources_for(config)}


def ansible_values(config: Config, runtime: Runtime) -> dict[str, Any]:
    """The build's values as both runners give them to Ansible: the config's, the extra roles as kiln hashed
    them (stages.roles_for_ansible), and the image's own Python."""
    plain = config.plain()
    return {
        **plain,
        **stages.roles_for_ansible(plain, config.repo_root, config.work_root, runtime.roles_path),
        "ansible_python_interpreter": "/usr/bin/python3",
    }


def render(
    config: Config,
    context: BuildContext,
    out_dir: Path,
    packer_version: tuple[int, int, int],
    runtime: Runtime,
) -> Rendered:
    """Render everything a Packer run needs into out_dir, atomically: on any error nothing is left behind.
    An existing out_dir is replaced only after the new render succeeded (and only if kiln made it).
    `packer_version` decides the template form (kiln.build.packer.version() tells the installed one)."""
    config.check_root(runtime.root)
    if not context.password_hash and config.get("install_method") == "installer":
        context = replace(context, password_hash=random_password_hash(runtime))
    out_dir = Path(out_dir)
    inputs.check_replaceable(out_dir, "render output directory")
    try:
        out_dir = out_dir.resolve()
        out_dir.parent.mkdir(parents=True, exist_ok=True)
        owned = tempdirs.create(out_dir.parent, out_dir.name)
        tmp = owned.path
    except (OSError, RuntimeError) as exc:
        why = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        raise InputError(f"{out_dir}: cannot create the render output directory: {why}") from None
    try:
        inputs.mark(tmp, "kiln render")
        # Paths inside the template point at the final directory, not the temp one.
        render_boot_files(config, context, tmp / "http")
        text = render_template(config, context, out_dir, packer_version)
        tmp.chmod(0o755)
        (tmp / TEMPLATE_OUT).write_text(text)
        if config.get("firmware") == "efi" and config.get("efi_firmware_vars"):
            shutil.copyfile(
                config.get("efi_firmware_vars"), tmp / "efi_vars.fd"
            )  # the template's pflash unit 1
        (tmp / "config.json").write_text(json.dumps(_for_goss_check(config), indent=2, sort_keys=True) + "\n")
        ansible_vars = {**ansible_values(config, runtime), **context.extra_vars}
        # the values as Ansible uses them, a proxy's login included: for this user only (config.json, which
        # anyone may read, has them as recorded, kiln.core.redact)
        fd = os.open(tmp / "ansible-vars.json", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as fh:
            fh.write(json.dumps(ansible_vars, indent=2, sort_keys=True) + "\n")
        tempdirs.put_in_place(tmp, out_dir)
    except OSError as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        raise InputError(f"{out_dir}: cannot write the rendered template: {exc.strerror or exc}") from None
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    finally:
        owned.release()
    return Rendered(
        out_dir, out_dir / TEMPLATE_OUT, packer_version, sources_for(config), outputs(config, context)
    )


# --- build credentials and placeholder contexts -----------------------------------------------------------


def random_password_hash(runtime: Runtime) -> str:
    """A SHA-512 crypt hash of a random password that is never stored or shown (installers need one).
    A pure computation: it runs even under --dry-run."""
    password = secrets.token_urlsafe(24)
    rt = runtime.live()
    out = proc.run(
        ["openssl", "passwd", "-6", "-stdin"],
        input_text=password + "\n",
        secret_values=[password],
        runtime=rt,
    )
    lines = out.output.strip().splitlines()
    if not lines or not lines[-1].startswith("$6$"):
        raise InputError("openssl passwd -6: no SHA-512 crypt hash in its output", hint="install openssl")
    return lines[-1]


def placeholder_context(
    config: Config, work_dir: Path, ssh_port: int = 2222, *, runtime: Runtime
) -> BuildContext:
    """A context for `kiln render` / `kiln validate` without a build: a throwaway key pair, a random
    password hash, and empty stand-in files for the bootstrap base disk and seed. `auto` accelerator
    renders as tcg here (no probe VM is booted just to render)."""
    from kiln.vm.ssh import generate_keypair  # the one key-pair generator

    work_dir.mkdir(parents=True, exist_ok=True)
    pair = generate_keypair(work_dir / "key", comment="kiln-placeholder")
    key, public = pair.private_key, pair.public_line
    stand_ins: dict[str, Path] = {}
    # what a build runs: its stages boot the cached base (the bootstrap disk, or the checked cloud image)
    if config.get("install_method") == "bootstrap" or (
        config.get("install_method") == "cloudimg" and config.get("builder") == "qemu"
    ):
        for what, name in (("base_disk", "base.qcow2"), ("seed_iso", "seed.iso")):
            path = work_dir / name
            path.touch()
            stand_ins[what] = path
    return BuildContext(
        ssh_private_key_file=key,
        ssh_public_key=public,
        password_hash=random_password_hash(runtime),
        ssh_port=ssh_port,
        output_dir=work_dir / "output",
        manifest_path=work_dir / "packer-manifest.json",
        accelerator="tcg" if config.get("accelerator") == "auto" else str(config.get("accelerator")),
        **stand_ins,  # type: ignore[arg-type]
    )
