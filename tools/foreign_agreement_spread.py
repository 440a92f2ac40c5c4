"""The spread of the integers' agreement with each source library over input seeds, with and without biases.

    OMP_NUM_THREADS=1 .venv/bin/python tools/foreign_agreement_spread.py [--seeds 6] [CASE ...]

Runs the networks of tests/test_foreign_libraries.py (the library's own NIR export, run by the library and by
our simulator from the compiled file) on --seeds other random inputs and prints, per case and layer, the
median agreement counted over spikes with its range. It tells whether a gap between the "no bias" and "with
biases" columns of the README's table is more than the spread one input seed already gives.
"""
from __future__ import annotations

import argparse
import os
import pathlib
import statistics
import sys
import tempfile

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests"))
import test_foreign_libraries as cases  # noqa: E402  (the test module holds the networks)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, default=6)
    parser.add_argument("case", nargs="*", help=f"default: every case ({', '.join(cases.CASES)})")
    args = parser.parse_args()
    original = cases._input
    print("| case | biases | layer | median agreement | range |\n|---|---|---|---:|---|")
    for case in args.case or list(cases.CASES):
        for bias in (False, True):
            if bias and case in cases.NO_BIAS:
                continue
            per_layer: dict[str, list[float]] = {}
            for seed in range(args.seeds):
                cases._input = lambda *shape, _seed=seed, **_: original(*shape, seed=100 + _seed)
                with tempfile.TemporaryDirectory() as folder:
                    library, ours, _, _ = cases.run_case(case, bias, pathlib.Path(folder))
                for node, spikes in library.items():
                    per_layer.setdefault(node, []).append(cases.agreement(ours[node], spikes))
            for node, values in per_layer.items():
                print(f"| {case} | {'yes' if bias else 'no'} | {node} | {statistics.median(values):.3f} | "
                      f"{min(values):.3f}-{max(values):.3f} |", flush=True)
    cases._input = original


if __name__ == "__main__":
    main()
