"""The report's calibration section (Markdown lines, also rendered into report.html) and its two charts, from the
``calibration_check`` entry of report.json (pipeline/calibration_check.py)."""

from __future__ import annotations

from typing import Any, Dict, List, Optional

from .gfm import md_table

SHOWN = 10  # tensors per table


def _pct(x: Optional[float]) -> str:
    return "n/a" if x is None else f"{x * 100:.3g} %"


def calibration_lines(report: Dict[str, Any]) -> List[str]:
    """The section: warnings first, then clip rates, convergence, overlap and coverage."""
    c = report.get("calibration_check")
    if not c:
        return []
    lines = ["## Calibration", "",
             f"{c['images']['calibration']} calibration images, checked against {c['images']['validation']} validation "
             f"images ({c.get('seconds', 0):.2f} s).", ""]
    lines += [f"> **Warning:** {w}" for w in c.get("warnings", [])] + ([""] if c.get("warnings") else [])
    for flavour, clip in c["clip"].items():
        sample = c["images"].get("clip_rate_sample", c["images"]["validation"])
        lines += [f"**Held-out clip rate** ({flavour} activations): the share of each quantized tensor's values on "
                  f"{sample} of the {c['images']['validation']} validation images (evenly spread) outside its calibrated range. "
                  f"Largest {_pct(clip['max'])}, mean {_pct(clip['mean'])} "
                  f"over {len(clip['tensors'])} tensors.", ""]
        lines += md_table(["tensor", "clip rate"], [[f"`{r['tensor']}`", _pct(r["rate"])] for r in clip["tensors"][:SHOWN]])
        lines.append("")
    conv = c["convergence"]
    pts = conv["points"]
    lines += [f"**Convergence** ({conv['method']} ranges at {', '.join(str(p) for p in pts)} images, every 4th, 2nd and "
              f"every image): the largest relative change of a typical range between {pts[-2] if len(pts) > 1 else 0} and "
              f"{pts[-1]} images is {_pct(conv['max_change'])}; {len(conv['moving'])} tensors move more than "
              f"{_pct(conv['threshold'])} (calibration.convergence_threshold). The min-max range, the most extreme value seen, "
              f"moved up to {_pct(conv.get('minmax_max_change', 0.0))}.", ""]
    lines += md_table(["tensor"] + [f"typical range at {p}" for p in pts] + ["change", "min-max change"],
                      [[f"`{r['tensor']}`"] + [f"{w:.4g}" for w in r["widths"]] + [_pct(r["change"]), _pct(r.get("minmax_change", 0.0))]
                       for r in conv["tensors"][:SHOWN]])
    leak = c["leakage"]
    lines += ["", f"**Overlap with validation**: {leak['shared']} validation images are calibration images "
              f"({leak['identical']} identical files, {leak['near_identical']} near-identical pictures: grey 16 x 16 "
              f"fingerprints with cosine >= {leak['near_cosine']}; the closest distinct pair: "
              f"{leak['closest_distinct_cosine']}). Policy: calibration.leakage = {c.get('leakage_policy')}."]
    cov = c["coverage"]
    if cov.get("labelled"):
        lines += ["", "**Coverage** (calibration images per class): "
                  + ", ".join(f"{k}: {v}" for k, v in cov["per_class"].items())
                  + (f". No images of: {', '.join(cov['empty'])}." if cov["empty"] else ".")]
    else:
        lines += ["", "**Coverage**: the calibration folder has no class subfolders, so images per class are not known."]
    return lines + [""]
