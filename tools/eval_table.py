"""Several models' evaluation results side by side, laid out as the paper's tables.

    python tools/eval_table.py base=runs/eval_base grpo_buffer=runs/eval_grpo zppo=runs/eval_zppo \
        --delta-of zppo --out runs/eval_table

Each NAME=DIR is a tools/evaluate.py output folder (its results.json). Writes table.md (per family:
a row per model, a column per benchmark, the average, and a Δ row: --delta-of minus the strongest
other model in each column; family averages with intervals over questions, benchmarks and both;
the Δ of the averages with an interval from resampling benchmarks and win counts), table.json (the
same as data) and families.png.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("runs", nargs="+", metavar="NAME=DIR")
    ap.add_argument("--delta-of", default="", help="the model whose Δ row and intervals are reported")
    ap.add_argument("--n-boot", type=int, default=10000)
    ap.add_argument("--out", required=True)
    args = ap.parse_args(argv)
    from megatron_zppo.evaluation import table

    runs = {}
    for spec in args.runs:
        name, sep, folder = spec.partition("=")
        path = Path(folder) / "results.json"
        if not sep or not path.is_file():
            print(f"eval_table: {spec!r}: expected NAME=DIR with DIR/results.json from tools/evaluate.py",
                  file=sys.stderr)
            return 2
        runs[name] = json.loads(path.read_text())
    if args.delta_of and args.delta_of not in runs:
        print(f"eval_table: --delta-of {args.delta_of!r} is not one of {list(runs)}", file=sys.stderr)
        return 2
    md, data = table.report(runs, args.delta_of, args.n_boot)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "table.md").write_text(md)
    (out / "table.json").write_text(json.dumps(data, indent=1))
    table.plot(runs, out / "families.png")
    print(md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
