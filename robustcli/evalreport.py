"""Reports of `robust eval`: JUnit XML (one test case per gate), a Markdown summary, JSON.

The report dict (built by `robustcli.commands.eval`) holds `checks`, each with its `gates`
(`GateResult.summary()`); the writers only format it. Measured values are deterministic given the
config's seed; times are not.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from pathlib import Path

from robustcli.core.files import atomic_path


def gate_counts(report: dict) -> tuple[int, int]:
    gates = [g for c in report["checks"] for g in c["gates"]]
    return len(gates), sum(not g["passed"] for g in gates)


def junit_xml(report: dict) -> str:
    total, failed = gate_counts(report)
    suites = ET.Element("testsuites", name=f"robust eval {report['name']}", tests=str(total), failures=str(failed))
    suites.set("time", f"{sum(c['time_s'] for c in report['checks']):.3f}")
    for check in report["checks"]:
        gates = check["gates"]
        suite = ET.SubElement(
            suites,
            "testsuite",
            name=check["name"],
            tests=str(len(gates)),
            failures=str(sum(not g["passed"] for g in gates)),
            errors="0",
            skipped="0",
            time=f"{check['time_s']:.3f}",
        )
        props = ET.SubElement(suite, "properties")
        for key in ("model", "data", "n", "seed"):
            ET.SubElement(props, "property", name=key, value=str(report[key]))
        ET.SubElement(props, "property", name="type", value=check["type"])
        for g in gates:
            case = ET.SubElement(
                suite, "testcase", classname=f"robust.eval.{check['name']}", name=g["gate"], time=f"{check['time_s'] / max(len(gates), 1):.3f}"
            )
            if not g["passed"]:
                failure = ET.SubElement(case, "failure", message=f"{g['gate']}: {g['message']}", type="GateFailed")
                failure.text = f"check {check['name']} ({check['type']}): gate {g['gate']} failed; {g['message']}"
            else:
                ET.SubElement(case, "system-out").text = g["message"]
    ET.indent(suites)
    return '<?xml version="1.0" encoding="utf-8"?>\n' + ET.tostring(suites, encoding="unicode") + "\n"


def _md(text: str) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def _value(v) -> str:
    return "-" if v is None else f"{v:.4g}"


def markdown(report: dict) -> str:
    total, failed = gate_counts(report)
    head = f"✅ all {total} gates passed" if failed == 0 else f"❌ {failed} of {total} gates failed"
    out = [
        f"## robust eval `{_md(report['name'])}`: {head}",
        "",
        f"Model `{_md(report['model'])}` on `{_md(report['data'])}`, n={report['n']}, seed {report['seed']}, "
        f"clean accuracy {_value(report.get('clean_accuracy'))}.",
        "",
        "| check | type | gate | measured | result |",
        "|---|---|---|---|---|",
    ]
    for c in report["checks"]:
        for g in c["gates"]:
            result = "✅ pass" if g["passed"] else f"❌ **FAIL**: {_md(g['message'])}"
            out.append(f"| {_md(c['name'])} | {c['type']} | `{_md(g['gate'])}` | {_value(g['value'])} | {result} |")
    failing = [(c["name"], g) for c in report["checks"] for g in c["gates"] if not g["passed"]]
    if failing:
        out += ["", "Failing gates:", ""]
        out += [f"- **{_md(name)}**: `{_md(g['gate'])}`: {_md(g['message'])}" for name, g in failing]
    out.append("")
    return "\n".join(out)


def write_text(path: str | Path, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")
