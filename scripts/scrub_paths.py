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
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TMP = Path(tempfile.gettempdir())
HOME = Path.home()


def _at(folder: Path) -> str:
    """``folder`` as a regex prefix (the patterns are derived from the machine this runs on, none written in)."""
    return re.escape(str(folder).rstrip("/"))


# what counts as a machine path (--check): this checkout's location, the lab's folders beside it (the shared
# folder, the main checkout, the engineers' worktrees; not everything beside it: a clone may sit in the temp
# folder), the temp folder's fixed names, the scripts' mktemp site folders and Python's mkdtemp folders, this user's home, other users' homes
PATTERNS = [
    re.compile(_at(ROOT) + r"\b"),
    re.compile(_at(ROOT.parent) + r"/(?:shared|main|wt)\b"),
    re.compile(_at(TMP) + r"/(?:site|wkv6_aux)\b"),
    re.compile(r"/groundthink-site\.(?!X{6})\w+"),
    re.compile(_at(TMP) + r"/(?:tmp\w{8}|gt-site\.(?!X{6})\w+)\b"),
    re.compile(_at(HOME) + r"/[\w.-]+"),
] + ([re.compile(_at(HOME.parent) + r"/[\w.-]+")] if HOME.parent != HOME.parent.parent else [])
# how --fix rewrites them, in order: the checkout prefix goes (the lab's and this one's), the pip --target folders
# become <site>, mkdtemp folders <tmpdir>, the device tool's output folder (under the home folder there) becomes $OUT
FIXES = [
    (re.compile(_at(ROOT.parent) + r"/(?:main|wt/[\w.+-]+)/"), ""),
    (re.compile(_at(ROOT) + r"/"), ""),       # this checkout wherever it is (a device machine's copy)
    (re.compile(_at(TMP) + r"/site\b"), "<site>"),
    (re.compile(r"[\w./-]*/groundthink-site\.(?!X{6})\w+"), "<site>"),
    (re.compile(_at(HOME) + r"/out\b"), "$OUT"),
    (re.compile(_at(TMP) + r"/gt-site\.(?!X{6})\w+"), "<site>"),
    (re.compile(_at(TMP) + r"/tmp\w{8}\b"), "<tmpdir>"),
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
