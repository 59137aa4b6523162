"""`kiln cidata`, `boot`, `ssh`, `conformance` and `serve`."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from kiln.cli.base import command, config_options, load_config
from kiln.core import paths
from kiln.core.builddir import BuildDir
from kiln.core.errors import (
    EXIT_OK,
)

# --- booting, SSH and conformance: cidata, boot, ssh, conformance (cidata.py, vm.py, boot.py, ...) -----


def _public_keys(args: argparse.Namespace) -> tuple[list[str], str]:
    """--ssh-public-key, else SSH_PUBLIC_KEY, else ~/.ssh/*.pub (the CLI is where the environment is read)."""
    import os

    from kiln.vm import cidata

    return cidata.discover_public_keys(args.ssh_public_key, os.environ.get("SSH_PUBLIC_KEY"), Path.home())


def _build_dir_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("build_dir", metavar="BUILD_DIR", type=Path, help="a finished build (packer/output/NAME)")


@command
def _register_boot(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser("cidata", help="write a cloud-init NoCloud seed ISO (what `make -C cloudinit` runs)")
    p.add_argument("-o", "--output", type=Path, help="ISO to write (default: cloudinit/cidata.iso)")
    p.add_argument(
        "--ssh-public-key", action="append", default=[], metavar="FILE",
        help="public key for ssh_authorized_keys (repeatable; default: SSH_PUBLIC_KEY, else ~/.ssh/*.pub)",
    )  # fmt: skip
    p.add_argument("--user", default=None, help="login user the seed creates (default: kiln)")
    p.add_argument("--hostname", help="local-hostname in meta-data (default: from build_name)")
    p.add_argument("--instance-id", help="instance-id in meta-data (default: new on every run)")
    p.add_argument("--network-config", action="store_true", help="add network-config (DHCP on every NIC)")
    src = p.add_mutually_exclusive_group()
    src.add_argument("--target", help="template values from this target's resolved config (e.g. debian-12)")
    src.add_argument("--build-dir", type=Path, help="template values from a finished build's config.json")
    config_options(p)
    p.set_defaults(func=_cmd_cidata)

    p = sub.add_parser("boot", help="boot a build on a throwaway overlay, SSH forwarded (Ctrl-C stops it)")
    _build_dir_arg(p)
    p.add_argument("--stop", action="store_true", help="stop a `kiln boot --detach` of BUILD_DIR")
    p.add_argument("--detach", action="store_true", help="return once the guest is up; stop with --stop")
    p.add_argument("--cidata", type=Path, metavar="ISO", help="your own seed (default: kiln makes one)")
    p.add_argument(
        "-i", "--identity", type=Path, metavar="KEY",
        help="private key for the --cidata seed (without it kiln only waits for sshd)",
    )  # fmt: skip
    p.add_argument("--user", help="login user (default: kiln, or the first user of the --cidata seed)")
    p.add_argument("--hostname", help="guest host name for kiln's seed (default: from build_name)")
    p.add_argument("--firmware", choices=("bios", "efi"), help="default: what the image declares")
    p.add_argument("--accelerator", choices=("auto", "kvm", "tcg"), help="default: the build's setting")
    p.add_argument(
        "--hardware", choices=("virtio", "vmware"),
        help="the guest's disk controller and NIC: virtio (default), or vmware: the OVA's PVSCSI and VMXNET3",
    )  # fmt: skip
    p.add_argument("--memory", type=int, help="guest memory in MiB (default: the build's memory setting)")
    p.add_argument("--cpus", type=int, help="guest vCPUs (default: the build's cpus setting)")
    p.add_argument("--timeout", type=float, default=900, help="seconds to wait for SSH and cloud-init")
    p.set_defaults(func=_cmd_boot)

    p = sub.add_parser("ssh", help="log into the booted BUILD_DIR (paramiko), or run CMD there")
    _build_dir_arg(p)
    p.add_argument(
        "cmd", nargs=argparse.REMAINDER, metavar="-- CMD", help="command to run (default: a login shell)"
    )
    p.set_defaults(func=_cmd_ssh)

    p = sub.add_parser("conformance", help="CNI + Kubernetes node e2e conformance run on BUILD_DIR")
    _build_dir_arg(p)
    p.add_argument("--tests", type=Path, required=True, metavar="TARBALL", help="kubernetes-test.tar.gz")
    p.add_argument("--nodes", type=int, help="ginkgo --nodes (default 8)")
    p.add_argument("--focus", help="ginkgo --focus (default \\[Conformance\\])")
    p.add_argument("--skip", help="ginkgo --skip (default: Flaky, Serial, sig-network, Lifecycle Hook)")
    p.add_argument("--timeout", type=float, default=4 * 3600, help="seconds the ginkgo run may take")
    p.add_argument("--results", type=Path, help="where JUnit files go (default: BUILD_DIR/conformance)")
    p.set_defaults(func=_cmd_conformance)


def _cmd_cidata(args: argparse.Namespace) -> int:
    from kiln.vm import cidata

    keys, source = _public_keys(args)
    if args.build_dir is not None:
        build = BuildDir.open(args.build_dir)
        values = build.values()
    elif args.target:
        values = dict(load_config(args, args.target).plain())
    else:
        from kiln.config.settings import SETTINGS

        values = {s.name: s.default for s in SETTINGS}
    # cloudinit/cidata.iso in a checkout (what `make -C cloudinit` writes), else in the current directory
    out = args.output or paths.work_root(args.runtime.root, Path.cwd()) / "cloudinit" / "cidata.iso"
    if args.runtime.dry_run:
        print(f"would write {out} (volume cidata; {len(keys)} key(s) from {source})")
        return EXIT_OK
    cidata.write_seed(
        out, keys, user=args.user or cidata.DEFAULT_USER, hostname=args.hostname,
        instance_id=args.instance_id, values=values, network_config=args.network_config,
        templates=cidata.template_dir(args.runtime.root),
    )  # fmt: skip
    user = args.user or cidata.DEFAULT_USER
    print(f"wrote {out} (volume cidata; {len(keys)} key(s) from {source}; user {user})")
    return EXIT_OK


def _cmd_boot(args: argparse.Namespace) -> int:
    import time

    from kiln.vm import boot

    build = BuildDir.open(args.build_dir)
    if args.stop:
        if args.runtime.dry_run:
            running = boot.read_state(build)
            print(f"would stop QEMU pid {running.pid}" if running else f"{build.path}: is not booted")
            return EXIT_OK
        state = boot.stop(build)
        print(f"stopped QEMU pid {state.pid}" if state else f"{build.path}: was not booted")
        return EXIT_OK
    vm, state = boot.start(
        build, cidata_iso=args.cidata, key=args.identity, user=args.user, firmware=args.firmware,
        accelerator=args.accelerator, memory=args.memory, cpus=args.cpus, hostname=args.hostname,
        detach=args.detach, timeout=args.timeout, hardware=args.hardware, runtime=args.runtime,
    )  # fmt: skip
    if args.runtime.dry_run:
        return EXIT_OK
    print(
        f"{build.name} is up ({state.accelerator}, {state.firmware}, {state.hardware}), QEMU pid {state.pid}"
    )
    print(f"  kiln ssh {build.path}")
    print(f"  hack/image-ssh.sh {build.path}")
    print(f"  {state.connect_hint()}")
    print(f"  serial log: {state.serial_log}")
    if args.detach:
        print(f"  stop with: kiln boot --stop {build.path}")
        return EXIT_OK
    print("Ctrl-C stops the VM.")
    try:
        while vm.running():
            time.sleep(1)
        print(f"the guest powered off ({vm.died()})")
    except KeyboardInterrupt:
        print("stopping the VM...")
    finally:
        vm.stop()
        boot.cleanup(build)
    return EXIT_OK


def _cmd_ssh(args: argparse.Namespace) -> int:
    from kiln.vm import boot

    build = BuildDir.open(args.build_dir)
    state = boot.require_state(build)
    cmd = args.cmd[1:] if args.cmd[:1] == ["--"] else args.cmd
    if args.runtime.dry_run:
        what = " ".join(cmd) if cmd else "an interactive shell"
        print(f"would run {what} as {state.user} on 127.0.0.1:{state.ssh_port} (QEMU pid {state.pid})")
        return EXIT_OK
    with boot.session(state) as session:
        if not cmd:
            return session.interactive(term=os.environ.get("TERM", "xterm"))
        command = cmd if len(cmd) > 1 else cmd[0]  # one word: a shell string, as with ssh
        rc, _, err = session.run(command, check=False, timeout=None, on_line=lambda ln: print(ln, flush=True))
        sys.stderr.write(err)
        return rc


def _cmd_conformance(args: argparse.Namespace) -> int:
    import tempfile

    from kiln.vm import boot, checkboot, conformance

    build = BuildDir.open(args.build_dir)
    flags = conformance.Flags().with_overrides(nodes=args.nodes, focus=args.focus, skip=args.skip)
    results = args.results or build.path / "conformance"
    if args.runtime.dry_run:  # nothing is booted, extracted or run
        print(
            f"would boot {build.path} (unless it is booted), run the node conformance tests from {args.tests}"
        )
        print(f"would write the results to {results}")
        return EXIT_OK
    with tempfile.TemporaryDirectory(prefix="kiln-e2e-") as tmp:
        binaries = conformance.extract_binaries(args.tests, Path(tmp))  # bad tarball: exit 2, nothing booted
        with boot.booted(build, runtime=args.runtime) as state, boot.session(state) as session:
            result = conformance.run(
                session, binaries, results, flags=flags,
                cni_bin_dirs=list(dict.fromkeys([checkboot.settings_of(build).cni_bin_dir,
                                                 *conformance.CNI_BIN_DIRS])),
                timeout=args.timeout, on_line=lambda ln: print(ln, flush=True),
            )  # fmt: skip
    print(f"conformance: ginkgo exited {result.returncode}; CNI {result.cni_version}, {result.cni_bin_dir}")
    for path in result.junit_files:
        print(f"  {path}")
    print(f"  log: {result.log_file}")
    if not result.junit_files:
        raise conformance.ConformanceFailed(
            f"{results}: ginkgo wrote no JUnit results", hint=f"see {result.log_file}"
        )
    if result.returncode != 0:
        raise conformance.ConformanceFailed(f"conformance run failed (ginkgo exit {result.returncode})")
    return EXIT_OK


# --- kiln serve: the netboot set over HTTP (serve.py) --------------------------------------------------


@command
def _register_serve(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser("serve", help="serve a build's netboot set over HTTP (labs and tests)")
    p.add_argument("build_dir", metavar="BUILD_DIR", type=Path)
    p.add_argument("--port", type=int, default=8080, help="port to listen on (default 8080; 0: any)")
    p.add_argument("--address", default="0.0.0.0", help="address to listen on (default 0.0.0.0)")
    p.add_argument("--advertise", help="the URL clients reach this server at (default: http://10.0.2.2:PORT)")
    p.add_argument("--cidata", type=Path, metavar="ISO|DIR", help="also serve this NoCloud seed at /seed/")
    p.add_argument(
        "--hosts", type=Path, metavar="INVENTORY",
        help="serve per-host iPXE scripts, seeds and ISOs for the hosts of this inventory (docs/hosts.md)",
    )  # fmt: skip
    p.add_argument(
        "--allow", action="append", default=[], metavar="CIDR",
        help="clients that may fetch seeds (repeatable; default: the subnet of --address)",
    )  # fmt: skip
    _seed_key_options(p)
    p.set_defaults(func=_cmd_serve)

    p = sub.add_parser("hosts", help="per-host ISOs, seeds and iPXE scripts from a build and an inventory")
    p.add_argument("inventory", metavar="INVENTORY", type=Path, help="YAML or JSON (docs/hosts.md)")
    _build_dir_arg(p)
    p.add_argument("-o", "--output", type=Path, required=True, metavar="OUT", help="directory to write")
    p.add_argument(
        "--base-url", default="",
        help="URL the netboot set is served at, hosts' files under BASE/hosts/ (default: set by the chain)",
    )  # fmt: skip
    _seed_key_options(p)
    p.set_defaults(func=_cmd_hosts)


def _seed_key_options(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--ssh-public-key", action="append", default=[], metavar="FILE",
        help="public key the hosts' seeds authorize (repeatable; default: SSH_PUBLIC_KEY, else ~/.ssh/*.pub)",
    )  # fmt: skip
    p.add_argument("--user", default=None, help="login user the seeds create (default: kiln)")


def _cmd_hosts(args: argparse.Namespace) -> int:
    from kiln.config import inventory
    from kiln.vm import cidata, hosts

    inv = inventory.load(args.inventory)  # a bad inventory is exit 2 before anything is written
    build = BuildDir.open(args.build_dir)
    keys, source = _public_keys(args)
    user, templates = args.user or cidata.DEFAULT_USER, cidata.template_dir(args.runtime.root)
    # every check of a real run first; a dry run stops after them, having written nothing
    plan = hosts.prepare(inv, build, args.output, keys=keys, user=user, base_url=args.base_url,
                         templates=templates)  # fmt: skip
    if args.runtime.dry_run:
        iso = "its ISO, " if plan.iso is not None else ""
        for host in inv.hosts:
            macs = ", ".join(host.macs)
            print(f"would write {args.output / host.name}/ for {host.name} ({iso}seed, iPXE by {macs})")
        return EXIT_OK
    written = hosts.write_all(inv, build, args.output, plan, say=lambda line: print(line, flush=True))
    print(f"wrote {len(written)} host(s) to {args.output} ({len(keys)} key(s) from {source})")
    return EXIT_OK


def _cmd_serve(args: argparse.Namespace) -> int:
    import time

    from kiln.vm import serve

    build = BuildDir.open(args.build_dir)
    seed = serve.seed_files(args.cidata) if args.cidata else None
    allow = serve.parse_allow(args.allow) if args.allow else None
    factory = None
    if args.hosts is not None:
        from kiln.vm import cidata, hosts

        keys, _ = _public_keys(args)
        factory = hosts.Factory(
            args.hosts, build, keys=keys, user=args.user or cidata.DEFAULT_USER,
            templates=cidata.template_dir(args.runtime.root), say=lambda line: print(line, flush=True),
        )  # fmt: skip
    if args.runtime.dry_run:
        print(f"would serve {build.path} on {args.address}:{args.port}")
        return EXIT_OK
    server = serve.Server(
        build, address=args.address, port=args.port, advertise=args.advertise, seed=seed, hosts=factory,
        allow=allow, say=lambda line: print(line, file=sys.stderr, flush=True),
    )  # fmt: skip
    with server:
        print(f"serving {server.dir} on {args.address}:{server.port} as {server.base}", flush=True)
        print(f"  iPXE: chain {server.base}/boot.ipxe", flush=True)
        if factory is not None:
            count = len(factory.inventory().hosts)
            print(f"  {count} host(s) from {args.hosts}: {server.base}/hosts/NAME/", flush=True)
            print(f"  seeds to: {', '.join(str(n) for n in server.allow)}", flush=True)
        print(
            f"  QEMU: qemu-system-x86_64 -m 2048 -boot n -netdev user,id=n0,bootfile={server.base}/boot.ipxe "
            "-device virtio-net-pci,netdev=n0",
            flush=True,
        )
        try:
            while True:
                time.sleep(3600)
        except KeyboardInterrupt:
            print("stopped")
    return EXIT_OK
