#!/usr/bin/env python3
"""Checks the declared MSRV: every workspace member's `rust-version` is at least the highest
`rust-version` any package of its resolved dependency graph declares.

Usage: cargo metadata --format-version 1 --locked | python3 .ci/msrv.py
"""
import json
import sys


def version(text):
    """'1.89' or '1.89.0' as a comparable tuple; None when not declared."""
    if not text:
        return None
    parts = [int(p) for p in text.split(".")]
    return tuple(parts + [0] * (3 - len(parts)))


def main():
    meta = json.load(sys.stdin)
    packages = {p["id"]: p for p in meta["packages"]}
    graph = {n["id"]: [d["pkg"] for d in n["deps"]] for n in meta["resolve"]["nodes"]}
    failed = False
    for member in meta["workspace_members"]:
        seen, todo = set(), list(graph.get(member, []))
        while todo:
            pkg = todo.pop()
            if pkg not in seen:
                seen.add(pkg)
                todo.extend(graph.get(pkg, []))
        declared = version(packages[member].get("rust_version"))
        needed = max(
            ((version(packages[p].get("rust_version")), packages[p]["name"]) for p in seen
             if packages[p].get("rust_version")),
            default=((0, 0, 0), "nothing"),
        )
        name = packages[member]["name"]
        shown = ".".join(map(str, declared)) if declared else "none"
        if declared is None or declared < needed[0]:
            failed = True
            print(f"msrv: {name} declares rust-version {shown}, but {needed[1]} needs "
                  f"{'.'.join(map(str, needed[0]))}", file=sys.stderr)
        else:
            print(f"msrv: {name} {shown} (highest dependency: {needed[1]} "
                  f"{'.'.join(map(str, needed[0]))})")
    sys.exit(1 if failed else 0)


main()
