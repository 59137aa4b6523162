"""One progress interface with several sinks, as osbuild's monitor: library code reports, sinks show.

    monitor.begin("os", "packer build: node, containerd, cni roles")
    monitor.log("os", "[01:02] qemu.node: Provisioning with Ansible...")
    monitor.progress("upload", done, total, "bytes")
    monitor.end("os", seconds, ok=True, note="cached as 3f2a9c")

Sinks: `Terminal` (the current stage and its activity lines; plain lines when stdout is not a TTY, as in
CI), `LogFile` (everything, into the build's build.log), `JsonLines` (`--progress=json`: one JSON object a
line, for CI systems), and `Multi` to fan out. Only the CLI chooses sinks.
"""

from __future__ import annotations

import json
import sys
import time
from typing import IO, Any, Protocol

from kiln.core import redact


class Monitor(Protocol):
    def begin(self, stage: str, what: str) -> None: ...

    def end(self, stage: str, seconds: float, ok: bool = True, note: str = "") -> None: ...

    def progress(self, stage: str, done: int, total: int | None, unit: str = "") -> None: ...

    def log(self, stage: str, line: str, show: bool = True) -> None: ...


class Null:
    """Reports nothing (library default)."""

    def begin(self, stage: str, what: str) -> None:
        pass

    def end(self, stage: str, seconds: float, ok: bool = True, note: str = "") -> None:
        pass

    def progress(self, stage: str, done: int, total: int | None, unit: str = "") -> None:
        pass

    def log(self, stage: str, line: str, show: bool = True) -> None:
        pass


class Terminal:
    """`==> stage: what` when a stage begins, its activity lines indented, `<== stage: done in 12s` at the
    end. Progress: rich progress bars when the stream is a terminal; otherwise a line at each quarter (a CI
    log gets four lines, not thousands). The only place kiln uses rich for progress."""

    def __init__(self, stream: IO[str] | None = None, bars: bool | None = None) -> None:
        self.stream = stream or sys.stdout
        self.bars = self.stream.isatty() if bars is None else bars
        self._quarter: dict[str, int] = {}
        self._rich: Any = None
        self._tasks: dict[str, Any] = {}

    def _say(self, text: str) -> None:
        text = redact.line(text)  # every sink shows a URL's login as ***
        if self._rich is not None:
            self._rich.console.print(text, markup=False, highlight=False)
        else:
            print(text, file=self.stream, flush=True)

    def begin(self, stage: str, what: str) -> None:
        self._say(f"==> {stage}: {what}")

    def end(self, stage: str, seconds: float, ok: bool = True, note: str = "") -> None:
        for key in [k for k in self._tasks if k == stage or k.startswith(f"{stage}: ")]:
            self._rich.remove_task(self._tasks.pop(key))
        if self._rich is not None and not self._tasks:
            self._rich.stop()
            self._rich = None
        extra = f" ({note})" if note else ""
        self._say(f"<== {stage}: {'done' if ok else 'FAILED'} in {seconds:.0f}s{extra}")

    def progress(self, stage: str, done: int, total: int | None, unit: str = "") -> None:
        if self.bars:
            self._bar(stage, done, total)
            return
        if not total:
            return
        quarter = min(4, int(4 * done / total))
        if quarter > self._quarter.get(stage, 0):
            self._quarter[stage] = quarter
            self._say(f"    {stage.rstrip(': ')}: {25 * quarter}% ({done}/{total} {unit})".rstrip())

    def _bar(self, stage: str, done: int, total: int | None) -> None:
        from rich.console import Console
        from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TransferSpeedColumn

        if self._rich is None:
            columns = (TextColumn("{task.description}"), BarColumn(), DownloadColumn(), TransferSpeedColumn())
            self._rich = Progress(*columns, console=Console(file=self.stream))
            self._rich.start()
        if stage not in self._tasks:
            self._tasks[stage] = self._rich.add_task(stage[-60:], total=total)
        self._rich.update(self._tasks[stage], completed=done, total=total)

    def log(self, stage: str, line: str, show: bool = True) -> None:
        if show:
            self._say(f"    {line}")


class LogFile:
    """Everything, timestamped, into a log file (the build's build.log)."""

    def __init__(self, fh: IO[str]) -> None:
        self.fh = fh

    def _write(self, text: str) -> None:
        self.fh.write(f"{time.strftime('%H:%M:%S')} {redact.line(text)}\n")
        self.fh.flush()

    def begin(self, stage: str, what: str) -> None:
        self._write(f"kiln: stage {stage}: {what}")

    def end(self, stage: str, seconds: float, ok: bool = True, note: str = "") -> None:
        self._write(f"kiln: stage {stage}: {'ok' if ok else 'failed'} in {seconds:.1f}s {note}".rstrip())

    def progress(self, stage: str, done: int, total: int | None, unit: str = "") -> None:
        pass  # the terminal shows progress; the log keeps what happened

    def log(self, stage: str, line: str, show: bool = True) -> None:
        self._write(f"kiln: {stage}: {line}")


class JsonLines:
    """`--progress=json`: one JSON object per event on `stream`, e.g.
    {"time": 1764608400.1, "event": "begin", "stage": "os", "what": "..."}."""

    def __init__(self, stream: IO[str] | None = None) -> None:
        self.stream = stream or sys.stdout

    def _emit(self, event: str, stage: str, **fields: Any) -> None:
        record = {"time": round(time.time(), 3), "event": event, "stage": stage, **redact.credentials(fields)}
        print(json.dumps(record, sort_keys=False), file=self.stream, flush=True)

    def begin(self, stage: str, what: str) -> None:
        self._emit("begin", stage, what=what)

    def end(self, stage: str, seconds: float, ok: bool = True, note: str = "") -> None:
        self._emit("end", stage, seconds=round(seconds, 3), ok=ok, note=note)

    def progress(self, stage: str, done: int, total: int | None, unit: str = "") -> None:
        self._emit("progress", stage, done=done, total=total, unit=unit)

    def log(self, stage: str, line: str, show: bool = True) -> None:
        self._emit("log", stage, line=line)


class Multi:
    def __init__(self, *sinks: Monitor) -> None:
        self.sinks = list(sinks)

    def begin(self, stage: str, what: str) -> None:
        for s in self.sinks:
            s.begin(stage, what)

    def end(self, stage: str, seconds: float, ok: bool = True, note: str = "") -> None:
        for s in self.sinks:
            s.end(stage, seconds, ok, note)

    def progress(self, stage: str, done: int, total: int | None, unit: str = "") -> None:
        for s in self.sinks:
            s.progress(stage, done, total, unit)

    def log(self, stage: str, line: str, show: bool = True) -> None:
        for s in self.sinks:
            s.log(stage, line, show)


def for_mode(mode: str, stream: IO[str] | None = None) -> Monitor:
    """The CLI's sink for --progress: json, plain or auto (plain lines; a TTY gets the same lines)."""
    if mode == "json":
        return JsonLines(stream)
    return Terminal(stream)
