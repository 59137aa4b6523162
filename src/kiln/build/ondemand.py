"""The tree's containerd, started on demand while a chroot stage's playbook runs.

A chroot stage runs no daemon (kiln.build.standins). Yet a node's roles load container images into containerd
while they provision: image-builder's kubernetes role imports the control plane's images with `ctr images
import` (its http source) or pulls them with `kubeadm config images pull` (its package source), and its
load_additional_components role imports or pulls more. In a build VM containerd runs; in a stage those tasks
failed on /run/containerd/containerd.sock.

So, for each playbook, kiln listens on the stage's /run/containerd/containerd.sock: the address containerd,
ctr, crictl, nerdctl and kubeadm use unless told otherwise. The first client that connects starts the tree's
own containerd (the first on the tree's PATH) in the tree, with the tree's config, root (/var/lib/containerd
in the tree) and state (/run/containerd, in the stage's /run), listening on a socket of kiln's
(`PRIVATE`); kiln passes each connection through to it. When the playbook ends, kiln stops it (SIGTERM, then
SIGKILL after STOP_WAIT) before the stage's mounts go; its log is the stage's (`LOG`, in the work directory),
and a containerd that fails to start puts its last lines in the build log.

The images it stores stay in the tree's /var/lib/containerd: the image's containerd has them at boot, as
after a build VM. It runs with the stage's capabilities (kiln.build.chroot.STAGE_CAPS) and the two that
unpacking layers needs: mounting their overlays, in the stage's own mount namespace, and making whiteouts.
Nothing else of the tree is started: a client of another daemon (docker) still finds none. A tree without
containerd, or a socket that a task made there first, leaves the address alone: its clients fail as before.

Run by the stage's namespace (kiln.build.chroot._MOUNTS) as `python -m kiln.build.ondemand TREE RUN WORK`,
with the stage's full capabilities, before they are cut for Ansible.
"""

from __future__ import annotations

import contextlib
import os
import selectors
import signal
import socket
import stat
import sys
import threading
import time
from pathlib import Path
from subprocess import Popen

from kiln.core import proc
from kiln.core.errors import CommandError
from kiln.core.runtime import Runtime

ADDRESS = "containerd/containerd.sock"  # under the stage's /run: containerd's default address
PRIVATE = "kiln-stage/containerd.sock"  # under the stage's /run: where the tree's containerd listens
LOG = "containerd.log"  # in the stage's work directory
START_WAIT = 60.0  # seconds for the tree's containerd to answer on PRIVATE (about 1 s here)
STOP_WAIT = 20.0  # seconds for it to stop at SIGTERM, before SIGKILL
# what containerd may do in a stage beyond the stage's own: mount a layer's overlay, make its whiteouts
CAPS = ("sys_admin", "mknod")


def say(message: str) -> None:
    print(f"kiln: {message}", file=sys.stderr, flush=True)


def find(tree: Path, runtime: Runtime) -> str | None:
    """Where the tree's PATH has containerd (as the tree names it), or None."""
    try:
        found = proc.output(
            ["chroot", str(tree), "sh", "-c", "command -v containerd"],
            env={"PATH": os.pathsep.join(proc.SYSTEM_PATH)},
            runtime=runtime,
        ).strip()
    except CommandError:
        return None
    return found if found.startswith("/") else None


def _stale(path: str) -> bool:
    """`path` is a socket that nothing answers on."""
    if not stat.S_ISSOCK(os.lstat(path).st_mode):
        return False
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
        try:
            probe.connect(path)
        except OSError:
            return True
    return False


def pump(src: socket.socket, dst: socket.socket) -> None:
    """Bytes from `src` to `dst` until `src` ends; then `dst` hears the end."""
    with contextlib.suppress(OSError):
        while data := src.recv(1 << 16):
            dst.sendall(data)
    with contextlib.suppress(OSError):
        dst.shutdown(socket.SHUT_WR)


class Activator:
    """Listens on ADDRESS in the stage's /run (`run`), starts the tree's containerd for its first client."""

    def __init__(self, tree: Path, run: Path, work: Path, caps: str, runtime: Runtime) -> None:
        self.tree, self.run, self.work, self.caps, self.runtime = tree, run, work, caps, runtime
        self.daemon: Popen[bytes] | None = None
        self.failed = False
        self.open: list[socket.socket] = []

    def listen(self) -> socket.socket | None:
        os.chdir(self.run)  # the socket's paths are relative: a work directory's can pass the 108-byte limit
        Path(ADDRESS).parent.mkdir(mode=0o711, exist_ok=True)
        if os.path.lexists(ADDRESS) and not _stale(ADDRESS):
            say(f"/run/{ADDRESS}: there already; the tree's containerd is not started on demand")
            return None
        with contextlib.suppress(FileNotFoundError):
            os.unlink(ADDRESS)  # a socket nothing answers on (one the tree's /run held)
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        listener.bind(ADDRESS)
        os.chmod(ADDRESS, 0o660)
        listener.listen(64)
        return listener

    def start(self) -> bool:
        """The tree's containerd answering on PRIVATE: True, or False (said why) for every client after."""
        if self.daemon is not None and self.daemon.poll() is None:
            return True
        if self.daemon is not None and not self.failed:
            self.failed = True
            say(f"the tree's containerd exited (status {self.daemon.returncode}); its last lines:")
            self.show_log()
        if self.failed:
            return False
        self.failed = True
        program = find(self.tree, self.runtime)
        if program is None:
            say(f"a client of /run/{ADDRESS}, and the tree has no containerd on its PATH: none started")
            return False
        with contextlib.suppress(FileNotFoundError):
            os.unlink(PRIVATE)
        caps = f"{self.caps},{','.join(f'+{cap}' for cap in CAPS)}"
        argv = [
            "setpriv", "--inh-caps=-all", "--ambient-caps=-all", "--bounding-set", caps, "--",
            "chroot", str(self.tree), program, "--address", f"/run/{PRIVATE}",
        ]  # fmt: skip
        env = {k: v for k, v in proc.tree_env(self.runtime).items() if k.lower().endswith("_proxy")}
        env.update(PATH=os.pathsep.join(proc.SYSTEM_PATH), HOME="/root", LANG="C.UTF-8")
        # not kiln's watchdog token, nor a death signal from this process: it ends with the stage's PID
        # namespace, whose first process carries the token (kiln.core.watchdog), or when stop() stops it
        self.daemon = proc.spawn(
            argv, log_path=self.work / LOG, env=env, die_with_parent=False, runtime=self.runtime
        )
        deadline = time.monotonic() + START_WAIT
        while time.monotonic() < deadline and self.daemon.poll() is None:
            try:
                with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
                    probe.connect(PRIVATE)
            except OSError:
                time.sleep(0.1)
                continue
            say(f"started the tree's containerd ({program}) for a client of /run/{ADDRESS}; it stops "
                "with the playbook")  # fmt: skip
            self.failed = False
            return True
        self.stop()
        say(f"the tree's containerd ({program}) did not answer on /run/{PRIVATE}; its last lines:")
        self.show_log()
        return False

    def show_log(self) -> None:
        with contextlib.suppress(OSError):
            for line in (self.work / LOG).read_text(errors="replace").splitlines()[-15:]:
                print(f"  {line}", file=sys.stderr, flush=True)

    def serve(self, client: socket.socket) -> None:
        if not self.start():
            client.close()
            return
        upstream = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            upstream.connect(PRIVATE)
        except OSError as exc:
            say(f"/run/{PRIVATE}: {exc.strerror}")
            upstream.close()
            client.close()
            return
        self.open += [client, upstream]
        for src, dst in ((client, upstream), (upstream, client)):
            threading.Thread(target=pump, args=(src, dst), daemon=True).start()

    def stop(self) -> None:
        if self.daemon is not None:
            proc.terminate(self.daemon, grace=STOP_WAIT)
        for sock in self.open:
            with contextlib.suppress(OSError):
                sock.close()
        with contextlib.suppress(FileNotFoundError):
            os.unlink(PRIVATE)


def main(argv: list[str]) -> int:
    from kiln.config.environ import default_runtime

    tree, run, work, caps = Path(argv[0]), Path(argv[1]), Path(argv[2]), argv[3]
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is Ansible's; the stage's shell sends SIGTERM after
    wake_r, wake_w = os.pipe()
    os.set_blocking(wake_w, False)
    signal.set_wakeup_fd(wake_w)
    stopping = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stopping.set())
    activator = Activator(tree, run, work, caps, default_runtime())
    listener = activator.listen()
    if listener is None:
        while not stopping.wait(0.5):
            pass
        return 0
    events = selectors.DefaultSelector()
    events.register(listener, selectors.EVENT_READ)
    events.register(wake_r, selectors.EVENT_READ)
    try:
        while not stopping.is_set():
            for key, _ in events.select():
                if key.fileobj is listener and not stopping.is_set():
                    client, _ = listener.accept()
                    activator.serve(client)
    finally:
        listener.close()
        with contextlib.suppress(FileNotFoundError):
            os.unlink(ADDRESS)
        activator.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
