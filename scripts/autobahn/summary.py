#!/usr/bin/env python3
"""Summarise an Autobahn |Testsuite report (reports/index.json) for wschat.

usage: summary.py INDEX_JSON [--write FILE] [--expected FILE]

Prints the count of each behaviour, lists every bad case, and exits 1 if any case FAILED
(or its close behaviour is WRONG CODE / UNCLEAN / FAILED BY CLIENT), or, with --expected,
if any case differs from that earlier summary. --write stores a small, diffable summary:
the counts and, per case, [behaviour, close behaviour, close code the server sent].
"""
import argparse
import collections
import json
import sys

BAD = {"FAILED", "WRONG CODE", "UNCLEAN", "FAILED BY CLIENT"}
# Bad cases listed on the terminal; the summary file has all of them.
LIST = 40
ORDER = ["OK", "NON-STRICT", "INFORMATIONAL", "UNIMPLEMENTED", "FAILED"]


def case_key(case_id):
    return [int(x) for x in case_id.split(".")]


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("index")
    parser.add_argument("--write", metavar="FILE")
    parser.add_argument("--expected", metavar="FILE")
    parser.add_argument("--meta", action="append", default=[], metavar="KEY=VALUE")
    args = parser.parse_args()

    report = json.load(open(args.index))
    if len(report) != 1:
        sys.exit(f"expected one agent in {args.index}, found {sorted(report)}")
    agent, cases = next(iter(report.items()))
    # Per case: [behavior, behaviorClose, the close code the server sent].
    per_case = {
        k: [v["behavior"], v["behaviorClose"], v["remoteCloseCode"]]
        for k, v in sorted(cases.items(), key=lambda kv: case_key(kv[0]))
    }
    behavior = collections.Counter(v[0] for v in per_case.values())
    close = collections.Counter(v[1] for v in per_case.values())
    counts = {name: behavior.get(name, 0) for name in ORDER}
    counts.update({k: n for k, n in behavior.items() if k not in counts})

    print(f"agent {agent}: {len(per_case)} cases")
    print("behavior:      " + ", ".join(f"{k} {n}" for k, n in counts.items()))
    print("behaviorClose: " + ", ".join(f"{k} {n}" for k, n in sorted(close.items())))
    rc = 0
    bad = [k for k, v in per_case.items() if v[0] in BAD or v[1] in BAD]
    for k in bad[:LIST]:
        v = per_case[k]
        print(f"  BAD {k}: {v[0]}/{v[1]} close={v[2]}")
    if len(bad) > LIST:
        print(f"  ... and {len(bad) - LIST} more bad cases (all of them in the summary file)")
    if bad:
        rc = 1

    if args.expected:
        expected = json.load(open(args.expected))["cases"]
        diff = sorted(set(expected) ^ set(per_case) | {k for k in set(expected) & set(per_case)
                                                       if expected[k] != per_case[k]},
                      key=case_key)
        for k in diff:
            print(f"  DIFF {k}: expected {expected.get(k)} got {per_case.get(k)}")
        if diff:
            rc = 1

    if args.write:
        meta = dict(m.split("=", 1) for m in args.meta)
        summary = dict(meta, cases_total=len(per_case), behavior=counts,
                       behaviorClose=dict(sorted(close.items())), failed=bad, cases=per_case)
        # One line per case, so a change in one case is a one-line diff.
        head = json.dumps({k: v for k, v in summary.items() if k != "cases"}, indent=1)
        lines = [f" {json.dumps(k)}: {json.dumps(v)}" for k, v in per_case.items()]
        with open(args.write, "w") as f:
            f.write(head[:-2] + ',\n "cases": {\n' + ",\n".join(lines) + "\n }\n}\n")
        print(f"summary written to {args.write}")

    passed = counts["OK"] + counts["NON-STRICT"] + counts["INFORMATIONAL"]
    print(f"autobahn: {passed} passed, {len(bad)} failed, {counts['UNIMPLEMENTED']} unimplemented")
    return rc


if __name__ == "__main__":
    sys.exit(main())
