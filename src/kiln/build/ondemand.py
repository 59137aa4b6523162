"""The tree's containerd, started on demand while a chroot stage's playbook runs.

A chroot stage runs no daemon (kiln.build.standins). Yet a node's roles load container images into containerd
while they provision: image-builder's kubernetes role imports the control plane's images with `ctr images
import` (its http source) or pulls them with `kubeadm config images pull` (its package source), and its
load_additional_components role imports or pulls more. In a build VM containerd runs; in a stage those tasks
failed on /run/containerd/containerd.sock.

So, for each playbook, kiln listens on the stage's /run/containerd/containerd.sock (`ADDRESS`): the address
containerd, ctr, crictl, nerdctl and kubeadm use unless told otherwise. The first client that connects starts
the tree's own containerd (the first of the system's bin directories in the tree that has it) in the tree,
with the tree's config, root (/var/lib/containerd in the tree) and state (/run/containerd, in the stage's
/run), listening on a socket of kiln's (`PRIVATE`), and kiln passes each connection through to it. When the
playbook ends, kiln stops it (SIGTERM, then SIGKILL after STOP_WAIT) before the stage's mounts go, and says
how it ended. Its log is `LOG` in the stage's work directory; a containerd that does not start, or ends
otherwise than at kiln's SIGTERM, puts its last lines in the build log. The build's proxy settings (its
http_proxy, https_proxy, no_proxy) are containerd's, for the pulls it makes itself (CRI: kubeadm, crictl).

The images it stores stay in the tree's /var/lib/containerd: the image's containerd has them at boot, as
after a build VM. It runs in a mount namespace of its own, with the stage's capabilities
(kiln.build.chroot.STAGE_CAPS) and the two that unpacking layers needs: mounting a layer's overlay and making
its whiteouts (`CAPS`). Nothing else of the tree is started: a client of another daemon (docker) still finds
none. Where the stage's /run/containerd is not a directory of its own (a link, a file), nothing listens.
With no containerd in the tree a client is turned away (its connection closed) and fails on its own timeout.

Run by the stage's namespace (kiln.build.chroot._MOUNTS) as `python -m kiln.build.ondemand TREE RUN WORK`,
with the stage's full capabilities, before they are cut for Ansible; `WORK/SETTINGS` holds the proxies. It
makes `WORK/READY` once it listens (or has said why it does not), and holds the lock the namespace's shell
waits on after the playbook (chroot.ONDEMAND_WAIT) until containerd has stopped.
"""

from __future__ import annotations

import contextlib
import json
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

from kiln.build import chroot, standins
from kiln.core import proc
from kiln.core.runtime import Runtime

ADDRESS = "containerd/containerd.sock"  # under the stage's /run: containerd's default address
PRIVATE = "kiln-stage/containerd.sock"  # under the stage's /run: where the tree's containerd listens
LOG = "containerd.log"  # in the stage's work directory
SETTINGS = chroot.ONDEMAND_SETTINGS  # in the stage's work directory: {"proxies": {NAME: VALUE}}
READY = chroot.ONDEMAND_READY  # in the stage's work directory: made once the address is taken (or left)
START_WAIT = 60.0  # seconds for the tree's containerd to answer on PRIVATE (about 1 s here)
STOP_WAIT = 20.0  # seconds for it to stop at SIGTERM, before SIGKILL
assert START_WAIT + STOP_WAIT < chroot.ONDEMAND_WAIT, "the namespace's shell waits for both"
# what containerd may do in a stage beyond the stage's own: mount a layer's overlay, make its whiteouts
CAPS = ("sys_admin", "mknod")


def say(message: str) -> None:
    print(f"kiln: {message}", file=sys.stderr, flush=True)


def find(tree: Path) -> str | None:
    """Where the tree has containerd (as the tree names it): the first of the system's bin directories, the
    tree's links followed in the tree."""
    for where in proc.SYSTEM_PATH:
        found = standins.in_tree(tree, f"{where}/containerd", follow=True)
        if found.is_file() and os.access(found, os.X_OK):
            return f"{where}/containerd"
    return None


def answers(path: str) -> bool:
    """Something listens on the socket at `path`."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
        try:
            probe.connect(path)
        except OSError:
            return False
    return True


def pump(src: socket.socket, dst: socket.socket) -> None:
    """Bytes from `src` to `dst` until `src` ends; then `dst` hears the end (a half-close)."""
    with contextlib.suppress(OSError):
        while data := src.recv(1 << 16):
            dst.sendall(data)
    with contextlib.suppress(OSError):
        dst.shutdown(socket.SHUT_WR)


class Activator:
    """Listens on ADDRESS in the stage's /run (`run`, the working directory from `listen` on: the socket paths
    are relative, as a work directory's absolute ones can pass the 108-byte limit), starts the tree's
    containerd for its first client and relays each connection to it."""

    def __init__(self, tree: Path, run: Path, work: Path, proxies: dict[str, str], runtime: Runtime) -> None:
        self.tree, self.run, self.work, self.proxies, self.runtime = tree, run, work, proxies, runtime
        self.daemon: Popen[bytes] | None = None
        self.failed = False
        self.stopping = threading.Event()
        self.lock = threading.Lock()
        self.open: set[socket.socket] = set()

    def listen(self) -> socket.socket | None:
        os.chdir(self.run)
        parent = Path(ADDRESS).parent
        try:
            mode = os.lstat(parent).st_mode
        except FileNotFoundError:
            parent.mkdir(mode=0o711)
            mode = os.lstat(parent).st_mode
        if not stat.S_ISDIR(mode):  # a link would lead out of the stage's /run, onto the build host
            say(f"/run/{parent}: not a directory; the tree's containerd is not started on demand")
            return None
        if os.path.lexists(ADDRESS):
            if not stat.S_ISSOCK(os.lstat(ADDRESS).st_mode) or answers(ADDRESS):
                say(f"/run/{ADDRESS}: there already; the tree's containerd is not started on demand")
                return None
            os.unlink(ADDRESS)  # a socket nothing answers on (one the tree's /run held)
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        part = f"{parent}/.kiln-{os.getpid()}.sock"  # listening before a client can see it
        listener.bind(part)
        os.chmod(part, 0o660)
        listener.listen(64)
        os.rename(part, ADDRESS)
        return listener

    def start(self) -> bool:
        """The tree's containerd answering on PRIVATE: True, or False (said why) for every client after."""
        if self.daemon is not None and self.daemon.poll() is None:
            return True
        if self.daemon is not None and not self.failed:
            self.failed = True
            say(f"the tree's containerd ended (status {self.daemon.returncode}) while the playbook ran; its "
                "last lines:")  # fmt: skip
            self.show_log()
        if self.failed:
            return False
        self.failed = True
        program = find(self.tree)
        if program is None:
            say(f"a client of /run/{ADDRESS}, and the tree has no containerd in "
                f"{':'.join(proc.SYSTEM_PATH)}: none started")  # fmt: skip
            return False
        with contextlib.suppress(FileNotFoundError):
            os.unlink(PRIVATE)
        caps = ",".join([chroot.CAPS_ARG, *(f"+{cap}" for cap in CAPS)])
        argv = [
            *chroot.SETPRIV, caps, "--", *chroot.IN_NAMESPACE,
            "chroot", str(self.tree), program, "--address", f"/run/{PRIVATE}",
        ]  # fmt: skip
        env = {"PATH": os.pathsep.join(proc.SYSTEM_PATH), "HOME": "/root", "LANG": "C.UTF-8"}
        for name, value in self.proxies.items():
            env[name] = env[name.upper()] = value
        # not kiln's watchdog token, nor a death signal from this process: it ends with the stage's PID
        # namespace, whose first process carries the token (kiln.core.watchdog), or when stop() stops it
        self.daemon = proc.spawn(
            argv, log_path=self.work / LOG, env=env, die_with_parent=False, runtime=self.runtime
        )
        deadline = time.monotonic() + START_WAIT
        while time.monotonic() < deadline and self.daemon.poll() is None and not self.stopping.is_set():
            if answers(PRIVATE):
                say(f"started the tree's containerd ({program}) for a client of /run/{ADDRESS}; it stops "
                    "with the playbook")  # fmt: skip
                self.failed = False
                return True
            time.sleep(0.1)
        if not self.stopping.is_set():
            say(f"the tree's containerd ({program}) did not answer on /run/{PRIVATE} in {START_WAIT:.0f} s")
        self.stop()
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
        with self.lock:
            self.open |= {client, upstream}
        threading.Thread(target=self.relay, args=(client, upstream), daemon=True).start()

    def relay(self, client: socket.socket, upstream: socket.socket) -> None:
        """Both ways until both ends are done, then both sockets closed."""
        back = threading.Thread(target=pump, args=(upstream, client), daemon=True)
        back.start()
        pump(client, upstream)
        back.join()
        with self.lock:
            self.open -= {client, upstream}
        client.close()
        upstream.close()

    def stop(self) -> None:
        """containerd stopped (SIGTERM, then SIGKILL after STOP_WAIT), how it ended said, each relay ended."""
        daemon, self.daemon = self.daemon, None
        if daemon is not None and daemon.poll() is None:
            started = time.monotonic()
            proc.terminate(daemon, grace=STOP_WAIT)
            if daemon.returncode == 0:
                say(f"stopped the tree's containerd (status 0, in {time.monotonic() - started:.1f} s)")
            else:
                killed = " (killed: it did not stop in time)" if daemon.returncode == -signal.SIGKILL else ""
                say(f"the tree's containerd ended with status {daemon.returncode}{killed}; its last lines:")
                self.show_log()
        with self.lock:
            for sock in self.open:
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(PRIVATE)


def main(argv: list[str]) -> int:
    from kiln.config.environ import default_runtime

    tree, run, work = Path(argv[0]), Path(argv[1]), Path(argv[2])
    try:
        proxies = json.loads((work / SETTINGS).read_text())["proxies"]
    except FileNotFoundError:
        proxies = {}
    # an interrupt reaches the stage as SIGTERM (proc.run: a session of its own); a terminal's Ctrl-C is
    # Ansible's to act on, and the namespace's shell stops this after the playbook
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    activator = Activator(tree, run, work, proxies, default_runtime())
    wake_r, wake_w = os.pipe()
    os.set_blocking(wake_w, False)
    signal.set_wakeup_fd(wake_w)
    signal.signal(signal.SIGTERM, lambda *_: activator.stopping.set())
    try:
        listener = activator.listen()
    except OSError as exc:
        say(f"/run/{ADDRESS}: {exc.strerror}; the tree's containerd is not started on demand")
        listener = None
    (work / READY).touch()
    if listener is None:
        while not activator.stopping.wait(0.5):
            pass
        return 0
    events = selectors.DefaultSelector()
    events.register(listener, selectors.EVENT_READ)
    events.register(wake_r, selectors.EVENT_READ)
    try:
        while not activator.stopping.is_set():
            for key, _ in events.select():
                if key.fileobj is listener and not activator.stopping.is_set():
                    try:
                        client, _ = listener.accept()
                    except OSError as exc:  # out of descriptors, say: the clients so far go on
                        say(f"/run/{ADDRESS}: {exc.strerror}")
                        time.sleep(0.5)
                        continue
                    activator.serve(client)
    finally:
        listener.close()
        with contextlib.suppress(FileNotFoundError):
            os.unlink(ADDRESS)
        activator.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
