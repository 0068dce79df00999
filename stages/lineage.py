"""Command (not a pipeline stage): the lineage of an artifact, and whether real data entered the data-free stages.

    python -m stages.lineage [models/student] [--json OUT]

Reads dvc.lock (what ran: every stage's deps with their hashes, params and outs),
dvc.yaml (what is declared) and the artifacts' JSON cards, walks from the stage that
produced the artifact back to the real data, and prints the chain: stage, output hash,
params, card facts (teacher hash and training params, BN-stats hash, synthetic-set hash
and synthesis params, pruning and distillation params), and the code revision.

Data-free verdict: every stage of the chain after the teacher (extract_bn_stats,
synthesize, prune, distill, or any stage added later) must have no real-data path
(an output of prepare_data, or anything under data/raw) among its dvc.yaml or dvc.lock
deps. Cards that name the hash of an input are checked against that input's current bytes.
Exit status 0 = data-free and consistent, 1 = not data-free or inconsistent, 2 = bad input.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from stages.core.lineage import lineage
from stages.core.runtime import StageError


def render(r: dict) -> str:
    lines = [f"Lineage of {r['artifact']} (made by stage {r['stage']}; from dvc.lock, dvc.yaml and the artifacts' cards)"]
    rev = r["code_revision"]
    lines.append(
        f"code revision: {rev['git_head'] or 'not a git repository'}"
        + (" (+ uncommitted changes in stages/, dvc.yaml or params.yaml)" if rev["uncommitted_changes"] else "")
    )
    for i, step in enumerate(r["chain"], 1):
        outs = ", ".join(f"{o['path']} (md5 {str(o['md5'])[:12]})" for o in step["outs"])
        lines.append(f"{i}. {step['stage']}: {outs}")
        if step["params"]:
            lines.append("   params: " + ", ".join(f"{k}={v}" for k, v in step["params"].items()))
        for k, v in step.get("card", {}).items():
            lines.append(f"   {k}: {v[:16] + '...' if isinstance(v, str) and k.endswith('_sha256') else v}")
    for c in r["card_checks"]:
        lines.append(f"card {c['card']}: {c['key']} {'matches' if c['match'] else 'DOES NOT MATCH'} {c['file']}")
    if r["data_free"]:
        after = [s["stage"] for s in r["chain"] if s["stage"] not in r["real_data_stages"]]
        lines.append(
            f"DATA-FREE: none of {', '.join(after)} depends on real data; real data entered only "
            f"{', '.join(r['real_data_stages']) or 'no stage'} (the teacher's own training)."
        )
    else:
        lines.append(
            "NOT DATA-FREE: real training data entered "
            + "; ".join(f"{e['stage']} (dep {e['dep']})" for e in r["real_data_in_data_free_stages"])
        )
    if not r["consistent"]:
        lines.append("INCONSISTENT: a card records an input that has changed since (stale artifact): run `dvc repro`")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m stages.lineage", description=__doc__.split("\n\n")[0])
    ap.add_argument("artifact", nargs="?", default="models/student", help="an output path of a stage (default models/student)")
    ap.add_argument("--root", type=Path, default=Path("."), help="project root (holds dvc.yaml and dvc.lock)")
    ap.add_argument("--json", type=Path, help="also write the lineage as JSON")
    args = ap.parse_args(argv)
    r = lineage(args.root, args.artifact)
    print(render(r))
    if args.json:
        args.json.write_text(json.dumps(r, indent=2) + "\n")
    return 0 if r["data_free"] and r["consistent"] else 1


if __name__ == "__main__":
    try:
        sys.exit(main())
    except StageError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
