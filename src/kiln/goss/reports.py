"""goss results as reports: the summary, the failure table, report.json in goss's own JSON shape, JUnit XML,
and goss's JSON read back (when the real goss binary ran the spec)."""

from __future__ import annotations

import json
import os
import xml.etree.ElementTree as ET
from collections.abc import Mapping
from dataclasses import asdict
from pathlib import Path
from typing import Any

from kiln.goss.specs import GOSS_TYPE, Result


def summary(results: list[Result]) -> dict[str, Any]:
    failed = sum(1 for r in results if not r.successful)
    skipped = sum(1 for r in results if r.skipped)
    return {"test-count": len(results), "failed-count": failed, "skipped-count": skipped}


def passed(path: Path) -> bool:
    """`path` is a report.json whose summary records checks and no failure (False when it is missing or
    unreadable: a re-verify that failed, or a report cut short, leaves the build dir unverified)."""
    try:
        counts = json.loads(path.read_text())["summary"]
        return counts["failed-count"] == 0 and isinstance(counts["test-count"], int)
    except (OSError, ValueError, KeyError, TypeError):
        return False


def failures(results: list[Result]) -> list[Result]:
    return [r for r in results if not r.successful]


def _fmt(value: Any) -> str:
    if isinstance(value, str):
        text = value.strip()
        return text if len(text) < 200 else text[:200] + "..."
    return json.dumps(value, default=str)


def failure_table(results: list[Result]) -> str:
    """A plain-text table of failures: resource, property, expected, found."""
    rows = [("RESOURCE", "PROPERTY", "EXPECTED", "FOUND")]
    for r in failures(results):
        found = r.err or _fmt(r.found)
        rows.append((f"{r.resource_type} {r.resource_id}", r.property, _fmt(r.expected), found))
    widths = [min(max(len(row[i].splitlines()[0] if row[i] else "") for row in rows), 60) for i in range(3)]
    lines = []
    for row in rows:
        cells = [row[i].replace("\n", "\\n") for i in range(4)]
        lines.append("  ".join(cells[i].ljust(widths[i]) for i in range(3)) + "  " + cells[3])
    return "\n".join(lines)


def report_json(results: list[Result], meta: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """goss's JSON output shape (`goss validate -f json`): results + summary, plus kiln's meta."""
    return {
        "results": [
            {
                "resource-type": GOSS_TYPE.get(r.resource_type, r.resource_type),
                "resource-id": r.resource_id,
                "property": r.property,
                "successful": r.successful,
                "skipped": r.skipped,
                "expected": r.expected,
                "found": r.found,
                "err": r.err or None,
                "duration": int(r.duration * 1e9),
                "source": r.source,
            }
            for r in results
        ],
        "summary": summary(results),
        "kiln": dict(meta or {}),
    }


def write_reports(
    results: list[Result], report_dir: Path, meta: Mapping[str, Any] | None = None
) -> tuple[Path, Path]:
    """Write report.json and junit.xml into `report_dir` (each atomically)."""
    report_dir.mkdir(parents=True, exist_ok=True)
    json_path = report_dir / "report.json"
    tmp = report_dir / ".report.json.tmp"
    tmp.write_text(json.dumps(report_json(results, meta), indent=2, default=str) + "\n")
    os.replace(tmp, json_path)

    s = summary(results)
    suite = ET.Element(
        "testsuite",
        name="goss",
        tests=str(s["test-count"]),
        failures=str(s["failed-count"]),
        skipped=str(s["skipped-count"]),
        time=f"{sum(r.duration for r in results):.3f}",
    )
    for r in results:
        case = ET.SubElement(
            suite,
            "testcase",
            classname=f"goss.{r.resource_type}",
            name=f"{r.resource_id}: {r.property}",
            time=f"{r.duration:.3f}",
        )
        if r.skipped:
            ET.SubElement(case, "skipped")
        elif not r.successful:
            failure = ET.SubElement(case, "failure", message=f"{r.title()}: expected {_fmt(r.expected)}")
            failure.text = f"expected: {_fmt(r.expected)}\nfound: {r.err or _fmt(r.found)}\nspec: {r.source}"
    junit_path = report_dir / "junit.xml"
    tmp = report_dir / ".junit.xml.tmp"
    root = ET.Element("testsuites", name="kiln-verify")
    root.append(suite)
    ET.ElementTree(root).write(tmp, encoding="unicode", xml_declaration=True)
    os.replace(tmp, junit_path)
    return json_path, junit_path


def results_from_goss_json(doc: Mapping[str, Any]) -> list[Result]:
    """Read `goss validate -f json` output into kiln's results (used when the goss binary runs)."""
    reverse = {v: k for k, v in GOSS_TYPE.items()}
    out = []
    for item in doc.get("results", []):
        out.append(
            Result(
                reverse.get(item.get("resource-type", ""), str(item.get("resource-type"))),
                str(item.get("resource-id")),
                str(item.get("property")),
                bool(item.get("successful")),
                bool(item.get("skipped")),
                item.get("expected"),
                item.get("found"),
                str(item.get("err") or ""),
                float(item.get("duration") or 0) / 1e9,
            )
        )
    return out


def result_dicts(results: list[Result]) -> list[dict[str, Any]]:
    return [asdict(r) for r in results]
