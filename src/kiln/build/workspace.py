"""The workspace of one build: the value every stage function gets (config, runtime, monitor, the temp build
dir, the log, the stage IDs) and what the stages have made so far."""

from __future__ import annotations

import contextlib
import tempfile
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from kiln.build import bootstrap, chroot, cloudimg, stages
from kiln.build.packer import PackerFlags
from kiln.build.render import Output
from kiln.config import Config
from kiln.config.typed import Settings
from kiln.core import space
from kiln.core.progress import Monitor
from kiln.core.runtime import Runtime

SERIAL_LOG = "build-serial.log"  # the build VM's console, in the temp build dir while a stage runs


@dataclass
class Workspace:
    """Runtime state of one build: what every stage function gets."""

    cfg: Config
    runtime: Runtime
    monitor: Monitor
    name: str
    temp: Path  # OUTPUT/.NAME.tmp-*: becomes the build dir
    work: Path  # temp/work: keys, seeds, renders (removed before publish)
    log_path: Path
    log_file: IO[str]
    accelerator: str
    builder: str
    ids: dict[str, stages.StageId]
    disk: Output | None = None  # the current stage's output disk
    base: bootstrap.BaseImage | None = None
    cloud: cloudimg.CloudBase | None = None  # a cloudimg target's base: the checked cloud image
    timings: dict[str, float] = field(default_factory=dict)
    # shared use locks on the cache entries this build stands on, released when the build ends
    holds: contextlib.ExitStack = field(default_factory=contextlib.ExitStack)
    reused: dict[str, str] = field(default_factory=dict)
    packer_flags: PackerFlags = field(default_factory=PackerFlags)  # PACKER_FLAGS: -on-error, -debug, ...
    needs: dict[str, int] = field(default_factory=dict)  # stage -> bytes it needs (estimate), for errors
    epoch: int = 0  # source_date_epoch, resolved once: every time finalize writes is clamped to it
    # what the os and kubernetes stages' tools are told the date is, and their trees' times are clamped to:
    # source_date_epoch when set (then it is in their IDs), else STAGE_SOURCE_DATE (kiln.build.stages)
    stage_epoch: int = stages.STAGE_SOURCE_DATE
    signing_key: Any = None  # the provenance's signing key (kiln.artifacts.provenance), loaded once
    # the last chroot stage's root tree, kept unpacked for whichever reads its packed copy next (the next
    # stage or finalize: chroot.take_or_unpack); it lives in `work`, which goes with the build however it ends
    handoff: chroot.Handoff | None = None
    remade: set[str] = field(default_factory=set)  # a dry run's: the cached disks a build would make again
    started: float = field(default_factory=time.time)
    published: bool = False  # the build dir is in place: whatever stops the run now, the build is done

    @property
    def base_disk(self) -> Path | None:
        """The disk the os stage stands on: the bootstrap base or the cloud image."""
        if self.base is not None:
            return self.base.disk
        return self.cloud.disk if self.cloud is not None else None

    @property
    def values(self) -> Mapping[str, Any]:
        """The resolved values as a plain mapping (for templates and Ansible); prefer `settings`."""
        return self.cfg.values

    @property
    def settings(self) -> Settings:
        return self.cfg.settings

    @property
    def packages_file(self) -> Path:
        return self.temp / f"{self.name}.packages"

    @property
    def host_tmp(self) -> Path:
        """Ansible's temp dir on the build host (the package list's task): in work/, not the host's /tmp."""
        return self.work / "ansible-host-tmp"

    @property
    def tree_record(self) -> Path:
        """What the build phase passed in the tree (kiln.goss.treephase), read by the verify boot."""
        from kiln.goss import treephase

        return treephase.record_path(self.temp)

    @contextmanager
    def stage(self, name: str, what: str) -> Iterator[None]:
        self.monitor.begin(name, what)
        started = time.monotonic()
        ok = False
        try:
            yield
            ok = True
        except Exception as exc:
            paths = [self.temp.parent, stages.root(self.cfg.path("cache_dir")), Path(tempfile.gettempdir())]
            if space.filled(exc, paths):  # one clear error, whichever tool or write hit the full filesystem
                err = space.full(paths, name, self.needs.get(name))
                err.message += f"\n{exc}"[:2000]  # what the tool or the write said
                raise err from exc
            raise
        finally:
            took = time.monotonic() - started
            self.timings[name] = round(took, 1)
            note = f"reused {self.reused[name][:12]}" if name in self.reused else ""
            if not ok and self.published:  # stopped while the older build was removed: this one is in place
                ok, note = True, "published; stopped while the older build was removed"
            self.monitor.end(name, took, ok, note)
