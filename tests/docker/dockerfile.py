#!/usr/bin/env python3
"""Dockerfile parsing and Debian package closures for tests/docker/.

As a module (check_compose.py): parse() splits a Dockerfile into stages of
(instruction, arguments); apt_installs() lists the packages a stage's RUNs
apt-get install.

As a program (check_build_steps.sh):
  dockerfile.py runtime-packages DOCKERFILE
      the final stage's apt-get install packages, one a line
  dockerfile.py base-closure
      the packages a debian:12-slim image holds before any apt-get: the
      installed Essential packages and what they depend on, one a line
  dockerfile.py closure PKG...
      PKG, their dependencies and the base closure, as installed on this
      Debian machine (dpkg's database), one a line
"""

import re
import shlex
import subprocess
import sys


class Instruction:
    def __init__(self, line, keyword, args):
        self.line = line  # first line of the instruction, 1-based
        self.keyword = keyword  # upper case
        self.args = args  # the rest, continuation lines joined


class Stage:
    def __init__(self, index, image, name, line):
        self.index = index
        self.image = image
        self.name = name  # None without AS
        self.line = line
        self.instructions = []


def instructions(text):
    """Instructions of a Dockerfile, continuations joined, comments out."""
    out = []
    buf = None
    start = 0
    for n, raw in enumerate(text.splitlines(), 1):
        stripped = raw.strip()
        if stripped.startswith("#") or (buf is None and not stripped):
            continue  # comment lines may sit inside a continuation
        if buf is None:
            buf, start = "", n
        if stripped.endswith("\\"):
            buf += stripped[:-1] + " "
            continue
        buf += stripped
        keyword, _, args = buf.partition(" ")
        out.append(Instruction(start, keyword.upper(), args.strip()))
        buf = None
    if buf is not None:
        keyword, _, args = buf.partition(" ")
        out.append(Instruction(start, keyword.upper(), args.strip()))
    return out


def parse(text):
    """The stages of a Dockerfile (instructions before the first FROM, ARG
    only, are dropped)."""
    stages = []
    for ins in instructions(text):
        if ins.keyword == "FROM":
            words = [w for w in ins.args.split() if not w.startswith("--")]
            image = words[0] if words else ""
            name = None
            if len(words) >= 3 and words[1].upper() == "AS":
                name = words[2]
            stages.append(Stage(len(stages), image, name, ins.line))
        elif stages:
            stages[-1].instructions.append(ins)
    return stages


def flag_value(args, flag):
    """The value of --flag=value in an instruction's arguments, else None."""
    m = re.search(r"(?:^|\s)--" + re.escape(flag) + r"=(\S+)", args)
    return m.group(1) if m else None


def apt_installs(stage):
    """Packages the stage's RUN instructions apt-get install."""
    pkgs = []
    for ins in stage.instructions:
        if ins.keyword != "RUN":
            continue
        try:
            words = shlex.split(ins.args)
        except ValueError:
            words = ins.args.split()
        i = 0
        while i < len(words):
            if words[i].endswith("apt-get") or words[i] == "apt":
                j = i + 1
                while j < len(words) and words[j].startswith("-"):
                    j += 1
                if j < len(words) and words[j] == "install":
                    j += 1
                    while j < len(words) and words[j] not in ("&&", ";", "||"):
                        if not words[j].startswith("-"):
                            pkgs.append(words[j].split("=")[0])
                        j += 1
                i = j
            else:
                i += 1
    return pkgs


def _installed():
    """name -> (essential, dependency groups); virtual name -> providers."""
    fmt = "${Package}\t${Essential}\t${db:Status-Status}\t${Pre-Depends}\t${Depends}\t${Provides}\n"
    out = subprocess.run(
        ["dpkg-query", "-W", "-f=" + fmt],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    pkgs = {}
    provides = {}
    for line in out.splitlines():
        f = line.split("\t")
        if len(f) != 6 or f[2] != "installed":
            continue
        groups = []
        for dep in (f[3] + "," + f[4]).split(","):
            alts = [_bare(a) for a in dep.split("|") if _bare(a)]
            if alts:
                groups.append(alts)
        pkgs[f[0]] = (f[1] == "yes", groups)
        for p in f[5].split(","):
            if _bare(p):
                provides.setdefault(_bare(p), []).append(f[0])
    return pkgs, provides


def _bare(dep):
    """'libc6:any (>= 2.34)' -> 'libc6'."""
    return dep.split("(")[0].strip().split(":")[0]


def closure(seeds, with_base=True):
    """seeds, what they depend on and (with_base) the base image's packages,
    following what is installed here."""
    pkgs, provides = _installed()
    todo = list(seeds)
    if with_base:
        todo += [p for p, (ess, _) in pkgs.items() if ess]
    seen = set()
    while todo:
        p = todo.pop()
        if p in seen:
            continue
        seen.add(p)
        if p not in pkgs:
            continue  # not installed here: its dependencies are unknown
        for alts in pkgs[p][1]:
            pick = None
            for a in alts:
                if a in pkgs:
                    pick = a
                    break
                if provides.get(a):
                    pick = provides[a][0]
                    break
            if pick is not None:
                todo.append(pick)
    return seen


def main(argv):
    if len(argv) == 3 and argv[1] == "runtime-packages":
        with open(argv[2], encoding="utf-8") as f:
            stages = parse(f.read())
        if not stages:
            print("dockerfile.py: no FROM in " + argv[2], file=sys.stderr)
            return 1
        print("\n".join(apt_installs(stages[-1])))
        return 0
    if len(argv) == 2 and argv[1] == "base-closure":
        print("\n".join(sorted(closure([]))))
        return 0
    if len(argv) >= 2 and argv[1] == "closure":
        print("\n".join(sorted(closure(argv[2:]))))
        return 0
    print(__doc__, file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv))
