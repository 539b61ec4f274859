"""The report's 'Where the numbers come from' section (report.md)."""

from __future__ import annotations

from typing import Any, Dict, List


def markdown_section(report: Dict[str, Any]) -> List[str]:
    """Where the logits (accuracy, agreement, cosine) and where latency/throughput were measured."""
    measured = report.get("measured")
    if not measured:
        return []
    lines = ["## Where the numbers come from", "",
             f"- Accuracy, agreement and logit error: {measured['accuracy']}.",
             "- Latency, first inference and throughput: the driver process, on this machine:"]
    for r in report.get("results", []):
        lat = (r.get("details") or {}).get("measured", {}).get("latency")
        if lat:
            lines.append(f"  - {r['artifact']}: host `{lat.get('host')}` ({lat.get('cpu')}), threads {lat.get('threads') or 'backend default'}")
    if measured.get("resumed_shards"):
        lines.append(f"- {measured['resumed_shards']} shards of logits were read from the resume directory.")
    return lines + [""]
