"""DVC experiments as a table: parse `dvc exp show --json` into one flat row per experiment."""

from __future__ import annotations

import pandas as pd

UNFINISHED = ("queued", "running")


def exp_nodes(doc) -> list[tuple[str, str, dict]]:
    """(name, rev, data) for the workspace, each commit and every experiment in a `dvc exp show --json` document."""
    found = []

    def walk(node):
        if isinstance(node, dict):
            if (node.get("executor") or {}).get("state") in UNFINISHED:
                return  # a queued or running experiment shows its baseline's numbers: not results yet
            if "rev" in node and isinstance(node.get("data"), dict):
                # A failed experiment carries an error and its baseline's numbers: keep it, without results.
                data = {"rev": node["rev"]} if node.get("error") else node["data"]
                found.append((node.get("name") or node["rev"], node["rev"], data))
            for v in node.values():
                walk(v)
        elif isinstance(node, list):
            for v in node:
                walk(v)

    walk(doc)
    return found


def flatten(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out |= flatten(v, f"{prefix}{k}.")
        else:
            out[f"{prefix}{k}"] = v
    return out


def experiments_table(doc, metrics_file: str = "reports/metrics.json", params_file: str = "params.yaml") -> pd.DataFrame:
    """One row per experiment (first occurrence of each name) with columns ``name``, ``rev``,
    ``params.<section>.<key>`` and ``metrics.<key>...``; experiments without metrics (queued, failed) are kept
    with ``has_metrics`` False."""
    rows, seen = [], set()
    for name, rev, data in exp_nodes(doc):
        if name in seen:
            continue
        seen.add(name)
        params = ((data.get("params") or {}).get(params_file) or {}).get("data") or {}
        metrics = ((data.get("metrics") or {}).get(metrics_file) or {}).get("data") or {}
        rows.append({"name": name, "rev": rev, "has_metrics": bool(metrics), **flatten(params, "params."), **flatten(metrics, "metrics.")})
    return pd.DataFrame(rows)
