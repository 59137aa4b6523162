"""A login in a URL stays out of what kiln writes down: the rule (kiln.core.redact), and the records that
use it (config.json, the provenance's config, the SBOM, the build log, a command's logged output)."""

from __future__ import annotations

import io
import json
import sys
from pathlib import Path

from kiln import config
from kiln.artifacts import sbom
from kiln.core import proc, progress, redact
from kiln_runtime import RUNTIME

REPO = Path(__file__).resolve().parent.parent
PROXY = "http://alice:s3cr%40t@proxy.corp:3128"


def test_the_user_part_of_every_url_is_starred() -> None:
    assert redact.line(PROXY) == "http://***@proxy.corp:3128"
    assert (
        redact.line("get https://TOKEN@dl.corp/x and ftp://u:p@m/y")
        == "get https://***@dl.corp/x and ftp://***@m/y"
    )
    for kept in ("http://proxy.corp:3128", "user@host:/path", "mailto:a@b", ""):
        assert redact.line(kept) == kept
    assert redact.credentials({"a": [PROXY, 3, None], "b": "deb http://u:p@m/debian bookworm main"}) == {
        "a": ["http://***@proxy.corp:3128", 3, None], "b": "deb http://***@m/debian bookworm main",
    }  # fmt: skip


def test_a_proxy_login_is_used_but_not_recorded(tmp_path: Path) -> None:
    cfg = config.load("debian-12", overrides={"http_proxy": PROXY, "containerd_url": "https://T0K@dl.corp/c.tgz",
                                             "containerd_source_type": "http"}, repo_root=REPO)  # fmt: skip
    assert cfg.plain()["http_proxy"] == PROXY  # what the build uses (Ansible's apt proxy)
    recorded = json.dumps(cfg.to_json()) + json.dumps(cfg.recorded())
    assert "s3cr" not in recorded and "alice" not in recorded and "http://***@proxy.corp:3128" in recorded
    doc = json.dumps(sbom.document("n", cfg.settings, []))
    assert "T0K" not in doc and "https://***@dl.corp/c.tgz" in doc


def test_logs_and_command_output_star_a_url_login(tmp_path: Path) -> None:
    fh = io.StringIO()
    progress.LogFile(fh).log("os", f"apt proxy {PROXY}")
    assert "s3cr" not in fh.getvalue() and "http://***@proxy.corp:3128" in fh.getvalue()
    log = tmp_path / "log"
    with open(log, "w") as out:
        result = proc.run([sys.executable, "-c", f"print({PROXY!r})"], log_file=out, runtime=RUNTIME)
    assert "s3cr" not in log.read_text() and "***@proxy.corp" in log.read_text()
    assert "***@proxy.corp" in result.output
