#!/usr/bin/env python3
"""BACKWARD compatibility of envrun's Avro schemas (the schema registry's
BACKWARD rule: a consumer using the new schema reads data written with the
previous one).

For each schemas/avro/*.avsc the previous version is the one before the last
change: HEAD's text when the working copy differs from it, else the text in
the parent of the last commit that changed the file. Every earlier version
kept in schemas/avro/history/ (<Name>_<n>.avsc) is checked against the
current <Name>.avsc too. The rules are the Avro specification's "Schema
Resolution" (reader = new, writer = old); logical types resolve as their
underlying types.

  check_compat.py REPO          check the repository (exit 1 on a break);
                                without full git history, history/ only
  check_compat.py --pair OLD NEW
                                check two files (exit 0 compatible, 1 not)
"""
import json
import os
import subprocess
import sys

PRIMITIVES = {"null", "boolean", "int", "long", "float", "double", "bytes",
              "string"}
# writer type -> reader types that can read it (besides itself)
PROMOTIONS = {
    "int": {"long", "float", "double"},
    "long": {"float", "double"},
    "float": {"double"},
    "string": {"bytes"},
    "bytes": {"string"},
}


class Names:
    """Named types of one schema, by full name."""

    def __init__(self, schema):
        self.types = {}
        self.collect(schema, None)

    def full(self, name, ns):
        if "." in name or not ns:
            return name
        return ns + "." + name

    def collect(self, s, ns):
        if isinstance(s, list):
            for b in s:
                self.collect(b, ns)
        elif isinstance(s, dict):
            t = s.get("type")
            if t in ("record", "error", "enum", "fixed"):
                ns = s.get("namespace", ns) if "." not in s["name"] else \
                    s["name"].rsplit(".", 1)[0]
                s["_full"] = self.full(s["name"], ns)
                self.types[s["_full"]] = s
                for f in s.get("fields", []):
                    self.collect(f["type"], ns)
            elif t == "array":
                self.collect(s["items"], ns)
            elif t == "map":
                self.collect(s["values"], ns)
            elif isinstance(t, (dict, list)):
                self.collect(t, ns)
            s["_ns"] = ns
        # a string is a primitive or a reference: resolved when used

    def resolve(self, s, ns):
        """The schema a (possibly referenced) type stands for."""
        if isinstance(s, str):
            if s in PRIMITIVES:
                return s
            for key in (self.full(s, ns), s):
                if key in self.types:
                    return self.types[key]
            same = [t for k, t in self.types.items() if short(k) == s]
            if len(same) == 1:
                return same[0]
            raise ValueError("unknown type name %s" % s)
        if isinstance(s, dict) and s.get("type") in PRIMITIVES:
            return s["type"]  # {"type": "long", "logicalType": ...}
        if isinstance(s, dict) and isinstance(s.get("type"), (dict, list)):
            return self.resolve(s["type"], s.get("_ns", ns))
        return s


def kind(s):
    if isinstance(s, str):
        return s
    if isinstance(s, list):
        return "union"
    return s["type"]


def short(name):
    return name.rsplit(".", 1)[-1]


def match(w, r, wn, rn, path, errors, seen):
    """Append to errors why reader r cannot read writer w."""
    w = wn.resolve(w, None)
    r = rn.resolve(r, None)
    kw, kr = kind(w), kind(r)
    if kw == "union":
        for i, b in enumerate(w):
            match(b, r, wn, rn, "%s<branch %d>" % (path, i), errors, seen)
        return
    if kr == "union":
        for b in r:
            sub = []
            match(w, b, wn, rn, path, sub, seen)
            if not sub:
                return
        errors.append("%s: no branch of the reader's union reads the "
                      "writer's %s" % (path, kw))
        return
    if kw in PRIMITIVES or kr in PRIMITIVES:
        if kw != kr and kr not in PROMOTIONS.get(kw, set()):
            errors.append("%s: writer's %s cannot be read as %s"
                          % (path, kw, kr))
        return
    if kw != kr:
        errors.append("%s: writer's %s cannot be read as %s" % (path, kw, kr))
        return
    if kw in ("record", "error", "enum", "fixed"):
        names = {short(r["_full"])} | {short(a) for a in r.get("aliases", [])}
        if short(w["_full"]) not in names:
            errors.append("%s: writer's %s is not the reader's %s"
                          % (path, w["_full"], r["_full"]))
            return
    if kw == "record":
        key = (w["_full"], r["_full"])
        if key in seen:
            return  # recursive type: already being checked
        seen.add(key)
        wfields = {f["name"]: f for f in w["fields"]}
        for f in r["fields"]:
            names = [f["name"]] + list(f.get("aliases", []))
            wf = next((wfields[n] for n in names if n in wfields), None)
            fpath = "%s.%s" % (path, f["name"])
            if wf is None:
                if "default" not in f:
                    errors.append("%s: new field without a default" % fpath)
            else:
                match(wf["type"], f["type"], wn, rn, fpath, errors, seen)
    elif kw == "enum":
        missing = [s for s in w["symbols"] if s not in r["symbols"]]
        if missing and "default" not in r:
            errors.append("%s: symbols %s removed and no enum default"
                          % (path, ", ".join(missing)))
    elif kw == "fixed":
        if w["size"] != r["size"]:
            errors.append("%s: fixed size %d became %d"
                          % (path, w["size"], r["size"]))
    elif kw == "array":
        match(w["items"], r["items"], wn, rn, path + "[]", errors, seen)
    elif kw == "map":
        match(w["values"], r["values"], wn, rn, path + "{}", errors, seen)


def incompatibilities(old_text, new_text):
    old = json.loads(old_text)
    new = json.loads(new_text)
    errors = []
    match(old, new, Names(old), Names(new), "", errors, set())
    return errors


def git(repo, *args):
    return subprocess.run(["git", "-C", repo] + list(args),
                          capture_output=True, text=True)


def previous_text(repo, rel):
    """The version before the last change of rel, or None (new file)."""
    head = git(repo, "show", "HEAD:" + rel)
    with open(os.path.join(repo, rel)) as f:
        current = f.read()
    if head.returncode == 0 and head.stdout != current:
        return head.stdout, "HEAD"
    last = git(repo, "log", "-n", "1", "--format=%H", "--", rel).stdout.strip()
    if not last:
        return None, None
    prev = git(repo, "show", last + "^:" + rel)
    if prev.returncode != 0:
        return None, last[:12] + "^"
    return prev.stdout, last[:12] + "^"


def check_repo(repo):
    has_history = git(repo, "rev-parse", "--git-dir").returncode == 0
    if has_history and git(repo, "rev-parse", "--is-shallow-repository") \
            .stdout.strip() == "true":
        has_history = False
    if not has_history:
        print("check_compat: no full git history here (not a checkout, or "
              "shallow): only schemas/avro/history/ is compared with")
    avro = os.path.join(repo, "schemas", "avro")
    failed = False
    checked = 0
    for name in sorted(os.listdir(avro)):
        if not name.endswith(".avsc"):
            continue
        rel = "schemas/avro/" + name
        with open(os.path.join(repo, rel)) as f:
            current = f.read()
        pairs = []
        prev, where = previous_text(repo, rel) if has_history else (None,
                                                                     None)
        if not has_history:
            pass
        elif prev is None:
            print("%s: new (no earlier version)" % rel)
        else:
            pairs.append((prev, "%s at %s" % (rel, where)))
        hist = os.path.join(avro, "history")
        stem = name[:-len(".avsc")]
        for h in sorted(os.listdir(hist)) if os.path.isdir(hist) else []:
            if h.startswith(stem + "_") and h.endswith(".avsc"):
                with open(os.path.join(hist, h)) as f:
                    pairs.append((f.read(), "schemas/avro/history/" + h))
        for old_text, label in pairs:
            checked += 1
            errors = incompatibilities(old_text, current)
            if errors:
                failed = True
                print("%s is not BACKWARD compatible with %s:" % (rel, label))
                for e in errors:
                    print("  " + e)
            else:
                print("%s reads %s: BACKWARD compatible" % (rel, label))
    print("check_compat: %d pairs checked, %s"
          % (checked, "FAILED" if failed else "all compatible"))
    return 1 if failed else 0


def main(argv):
    if len(argv) == 4 and argv[1] == "--pair":
        with open(argv[2]) as f:
            old = f.read()
        with open(argv[3]) as f:
            new = f.read()
        errors = incompatibilities(old, new)
        for e in errors:
            print(e)
        return 1 if errors else 0
    if len(argv) == 2:
        return check_repo(argv[1])
    sys.stderr.write(__doc__)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv))
