"""Find (and in logs, remove) absolute paths of one machine: the checkout's location, a fixed site folder, home
and output folders. Committed files must not carry them (a reader's machine has other paths).

    python scripts/scrub_paths.py --check [PATH ...]     # list every hit in tracked text files; exit 1 if any
    python scripts/scrub_paths.py --fix FILE ...         # rewrite those paths in FILE (logs): the checkout
                                                         # prefix goes (paths become repo-relative), the pip
                                                         # --target folder becomes <site>, the device tool's
                                                         # output folder becomes $OUT; nothing else changes

Run from the repository root; PATHs default to every tracked file (``git ls-files``).
"""
from __future__ import annotations

import argparse
import re
import subprocess
import sys
from pathlib import Path

# what counts as a machine path (--check)
PATTERNS = [
    re.compile(r"/work/[\w.+-]+"),           # a checkout or shared folder of the lab's machines
    re.compile(r"/tmp/site\b"),              # a fixed pip --target folder
    re.compile(r"/groundthink-site\.(?!X{6})\w+"),   # the scripts' temporary --target folder (mktemp)
    re.compile(r"/tmp/wkv6_aux"),            # a fixed result file
    re.compile(r"/home/[\w.-]+"),
    re.compile(r"/root/[\w.-]+"),
    re.compile(r"/Users/[\w.-]+"),
]
# how --fix rewrites them, in order
FIXES = [
    (re.compile(r"/work/(?:main|wt/[\w.+-]+)/"), ""),
    (re.compile(r"/tmp/site\b"), "<site>"),
    (re.compile(r"[\w./-]*/groundthink-site\.(?!X{6})\w+"), "<site>"),
    (re.compile(r"/root/out\b"), "$OUT"),
]


def tracked(paths: list[str]) -> list[Path]:
    out = subprocess.run(["git", "ls-files", "-z", "--", *paths], capture_output=True, check=True).stdout
    return [Path(p) for p in out.decode().split("\0") if p]


def hits(path: Path) -> list[tuple[int, str]]:
    try:
        text = path.read_text(encoding="utf-8")
    except (UnicodeDecodeError, OSError):
        return []           # binary (plots) or unreadable: not text a reader copies
    return [(i + 1, m.group(0)) for i, line in enumerate(text.splitlines()) for pat in PATTERNS
            for m in pat.finditer(line)]


def fix(path: Path) -> int:
    text = path.read_text(encoding="utf-8")
    n = 0
    for pat, repl in FIXES:
        text, k = pat.subn(repl, text)
        n += k
    path.write_text(text, encoding="utf-8")
    return n


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    g = p.add_mutually_exclusive_group(required=True)
    g.add_argument("--check", action="store_true")
    g.add_argument("--fix", action="store_true")
    p.add_argument("paths", nargs="*")
    a = p.parse_args(argv)
    if a.fix:
        for f in a.paths:
            print(f"{f}: {fix(Path(f))} paths rewritten")
        return 0
    me = Path(__file__).resolve()
    found = [(f, ln, s) for f in tracked(a.paths) if f.resolve() != me for ln, s in hits(f)]
    for f, ln, s in found:
        print(f"{f}:{ln}: {s}")
    return 1 if found else 0


if __name__ == "__main__":
    sys.exit(main())
