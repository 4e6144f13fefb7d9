"""What a curation run kept, regenerated and dropped, per source and per step, and what it cost.

Built from the finished rows only (each row carries its own step outcomes and usage), so the figures are
exact however Ray Data spread the rows over workers. "calls" are requests paid for in this run; "cache_hits"
were replayed from the request cache (free); token counts are the endpoint's ``usage`` figures.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

from vt_ray.config.curate import STEPS, CurateConfig

USAGE_KEYS = ("calls", "cache_hits", "prompt_tokens", "completion_tokens", "cached_prompt_tokens",
              "cached_completion_tokens", "retries", "rate_limited", "failed_calls")


def _per_step(rows: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    steps: dict[str, dict[str, Any]] = {}
    for step in STEPS:
        seen = [r for r in rows if step in r["steps"]]
        s: dict[str, Any] = {
            "rows": len(seen),
            "requests": sum(r["steps"][step]["attempts"] for r in seen),
            "regenerated": sum(1 for r in seen if r["steps"][step]["attempts"] > 1 and step != "caption"),
            "dropped": sum(1 for r in rows if r["dropped_at"] == step),
            "failures": dict(Counter(f.split(":")[0] for r in seen for f in r["steps"][step]["failures"])),
        }
        s["kept"] = s["rows"] - s["dropped"]
        for key in USAGE_KEYS:
            s[key] = sum(r["usage"].get(step, {}).get(key, 0) for r in rows)
        steps[step] = s
    return steps


def _per_source(rows: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    for name in sorted({r["source"] for r in rows}):
        mine = [r for r in rows if r["source"] == name]
        out[name] = {
            "records": len(mine),
            "kept": sum(1 for r in mine if r["status"] == "ok"),
            "dropped": sum(1 for r in mine if r["status"] != "ok"),
            "regenerated": sum(1 for r in mine if r["steps"].get("trace", {}).get("attempts", 0) > 1),
            "completion": dict(Counter(r["completion"] or "none" for r in mine)),
            "dropped_at": dict(Counter(r["dropped_at"] for r in mine if r["status"] != "ok")),
            "drop_reasons": dict(Counter((r["reason"] or "").split(":")[0] for r in mine if r["status"] != "ok")),
        }
    return out


def build_stats(rows: list[dict[str, Any]], cfg: CurateConfig, seconds: float) -> dict[str, Any]:
    steps = _per_step(rows)
    total = {key: sum(s[key] for s in steps.values()) for key in USAGE_KEYS}
    return {
        "records": len(rows),
        "kept": sum(1 for r in rows if r["status"] == "ok"),
        "dropped": sum(1 for r in rows if r["status"] != "ok"),
        "regenerated": sum(1 for r in rows if r["steps"].get("trace", {}).get("attempts", 0) > 1),
        "seconds": round(seconds, 3),
        "prompt_version": cfg.prompt_version,
        "max_regenerations": cfg.max_regenerations,
        "cost": total,
        "per_source": _per_source(rows),
        "per_step": steps,
        "endpoints": {s: {"kind": getattr(cfg.endpoints, s).kind, "model": getattr(cfg.endpoints, s).model}
                      for s in STEPS},
    }


def render_markdown(stats: dict[str, Any]) -> str:
    c = stats["cost"]
    lines = [
        "# Hindsight-Curation report", "",
        f"{stats['records']} records: **{stats['kept']} kept**, {stats['dropped']} dropped, "
        f"{stats['regenerated']} needed trace regeneration (max {stats['max_regenerations']}); "
        f"{stats['seconds']:.1f} s, prompts {stats['prompt_version']}.", "",
        f"Cost: {c['calls']} paid calls ({c['prompt_tokens']} prompt + {c['completion_tokens']} completion "
        f"tokens), {c['cache_hits']} cache hits, {c['retries']} retries ({c['rate_limited']} rate limited), "
        f"{c['failed_calls']} requests failed for good.", "",
        "## Per source", "",
        "| source | records | kept | regenerated | dropped | drop reasons |", "|---|---|---|---|---|---|",
    ]
    for name, s in stats["per_source"].items():
        reasons = ", ".join(f"{k} {v}" for k, v in s["drop_reasons"].items()) or "-"
        lines.append(f"| {name} | {s['records']} | {s['kept']} | {s['regenerated']} | {s['dropped']} | {reasons} |")
    lines += ["", "## Per step", "",
              "| step | rows | requests | regenerated | dropped | paid calls | cache hits | prompt tok | "
              "completion tok | retries |", "|---|---|---|---|---|---|---|---|---|---|"]
    for name, s in stats["per_step"].items():
        lines.append(f"| {name} | {s['rows']} | {s['requests']} | {s['regenerated']} | {s['dropped']} | "
                     f"{s['calls']} | {s['cache_hits']} | {s['prompt_tokens']} | {s['completion_tokens']} | "
                     f"{s['retries']} |")
    return "\n".join(lines) + "\n"
