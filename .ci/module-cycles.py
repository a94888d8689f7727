#!/usr/bin/env python3
"""Fails if the top-level modules of a crate import each other in a circle.

Each file or directory directly under a crate's `src/` is a module; a `crate::NAME` path in
any file of module A (a `use` or an inline path) is an edge from A to NAME. A module graph
without circles is one a reader can take in order, and the layers it shows are the ones the
compiler cannot enforce inside one crate. Test-only code (`tests.rs`, `tests/` folders and
`#[cfg(test)] mod tests { ... }` blocks) is left out: tests may reach anywhere.

Usage: module-cycles.py [CRATE_DIR ...]  (default: every workspace member with a src/)
"""
import os
import re
import sys

PATH = re.compile(r"\bcrate::([a-z_][a-z0-9_]*)")
USE_GROUP = re.compile(r"\buse\s+crate::\{([^;]*)\}", re.S)


def strip_tests(text):
    """Drops `#[cfg(test)]`-gated `mod NAME { ... }` blocks (brace-matched) and comments."""
    text = re.sub(r"//[^\n]*", "", text)
    out, i = [], 0
    for m in re.finditer(r"#\[cfg\(test\)\]\s*(pub(\([^)]*\))?\s+)?mod\s+\w+\s*\{", text):
        if m.start() < i:
            continue
        out.append(text[i:m.start()])
        depth, j = 1, m.end()
        while j < len(text) and depth:
            depth += {"{": 1, "}": -1}.get(text[j], 0)
            j += 1
        i = j
    out.append(text[i:])
    return "".join(out)


def modules(src):
    mods = {}
    for entry in sorted(os.listdir(src)):
        path = os.path.join(src, entry)
        if entry in ("lib.rs", "main.rs"):
            continue
        if entry.endswith(".rs"):
            mods[entry[:-3]] = [path]
        elif os.path.isdir(path):
            files = []
            for root, dirs, names in os.walk(path):
                dirs[:] = [d for d in dirs if d != "tests"]
                files += [os.path.join(root, n) for n in names if n.endswith(".rs") and n != "tests.rs"]
            mods[entry] = files
    return mods


def edges(mods):
    graph = {m: {} for m in mods}
    for m, files in mods.items():
        for f in files:
            text = strip_tests(open(f, encoding="utf-8").read())
            names = PATH.findall(text)
            for group in USE_GROUP.findall(text):
                names += re.findall(r"(?:^|,)\s*([a-z_][a-z0-9_]*)", group)
            for n in names:
                if n in mods and n != m:
                    graph[m].setdefault(n, os.path.relpath(f))
    return graph


def cycles(graph):
    """Strongly connected components of more than one module (Tarjan)."""
    index, low, stack, on, out, counter = {}, {}, [], set(), [], [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    sys.setrecursionlimit(10000)
    for v in graph:
        if v not in index:
            visit(v)
    return out


def crates(root):
    text = open(os.path.join(root, "Cargo.toml"), encoding="utf-8").read()
    members = re.search(r"members\s*=\s*\[([^\]]*)\]", text).group(1)
    return [os.path.join(root, m) for m in re.findall(r'"([^"]+)"', members)]


def main():
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    dirs = sys.argv[1:] or crates(root)
    failed = False
    for d in dirs:
        src = os.path.join(d, "src")
        if not os.path.isdir(src):
            continue
        graph = edges(modules(src))
        for comp in cycles(graph):
            failed = True
            print(f"{os.path.relpath(d, root)}: modules in a circle: {', '.join(comp)}")
            for a in comp:
                for b, where in sorted(graph[a].items()):
                    if b in comp:
                        print(f"  {a} -> {b}  ({where})")
    if failed:
        sys.exit(1)
    print(f"no module circles in {len(dirs)} crates")


if __name__ == "__main__":
    main()
