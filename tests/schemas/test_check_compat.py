#!/usr/bin/env python3
"""The rules of check_compat.py on small schemas, both ways, so the CI
check can fail: each case says whether the new schema must read the old."""
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import check_compat  # noqa: E402


def rec(*fields, name="R"):
    return {"type": "record", "name": name, "namespace": "envrun",
            "fields": list(fields)}


def enum(*symbols, **extra):
    e = {"type": "enum", "name": "E", "symbols": list(symbols)}
    e.update(extra)
    return e


A = {"name": "a", "type": "string"}
CASES = [
    # (what, old, new, compatible)
    ("same", rec(A), rec(A), True),
    ("field added with a default", rec(A),
     rec(A, {"name": "b", "type": ["null", "string"], "default": None}), True),
    ("field added without a default", rec(A),
     rec(A, {"name": "b", "type": "string"}), False),
    ("field removed", rec(A, {"name": "b", "type": "int"}), rec(A), True),
    ("int widened to long", rec({"name": "a", "type": "int"}),
     rec({"name": "a", "type": "long"}), True),
    ("long narrowed to int", rec({"name": "a", "type": "long"}),
     rec({"name": "a", "type": "int"}), False),
    ("string to int", rec(A), rec({"name": "a", "type": "int"}), False),
    ("made optional", rec(A),
     rec({"name": "a", "type": ["null", "string"], "default": None}), True),
    ("optional made required", rec(
        {"name": "a", "type": ["null", "string"], "default": None}), rec(A),
     False),
    ("enum symbol added", rec({"name": "e", "type": enum("x", "y")}),
     rec({"name": "e", "type": enum("x", "y", "z")}), True),
    ("enum symbol removed", rec({"name": "e", "type": enum("x", "y")}),
     rec({"name": "e", "type": enum("x")}), False),
    ("enum symbol removed with a default",
     rec({"name": "e", "type": enum("x", "y")}),
     rec({"name": "e", "type": enum("x", default="x")}), True),
    ("record renamed", rec(A), rec(A, name="S"), False),
    ("record renamed with an alias", rec(A),
     dict(rec(A, name="S"), aliases=["R"]), True),
    ("field renamed with an alias", rec(A),
     rec({"name": "b", "type": "string", "aliases": ["a"]}), True),
    ("logical type added", rec({"name": "t", "type": "long"}),
     rec({"name": "t", "type": {"type": "long",
                                "logicalType": "timestamp-millis"}}), True),
    ("union branch added",
     rec({"name": "u", "type": [rec(A, name="X"), rec(A, name="Y")]}),
     rec({"name": "u", "type": [rec(A, name="X"), rec(A, name="Y"),
                                rec(A, name="Z")]}), True),
    ("union branch removed",
     rec({"name": "u", "type": [rec(A, name="X"), rec(A, name="Y")]}),
     rec({"name": "u", "type": [rec(A, name="X")]}), False),
    ("array items narrowed", rec({"name": "l", "type":
                                  {"type": "array", "items": "long"}}),
     rec({"name": "l", "type": {"type": "array", "items": "int"}}), False),
    ("named reference", rec({"name": "e", "type": enum("x")},
                            {"name": "f", "type": "E"}),
     rec({"name": "e", "type": enum("x", "y")}, {"name": "f", "type": "E"}),
     True),
]


def main():
    failed = 0
    for what, old, new, ok in CASES:
        errors = check_compat.incompatibilities(json.dumps(old),
                                                json.dumps(new))
        if (not errors) != ok:
            failed += 1
            print("FAIL %s: expected %s, got %s" % (
                what, "compatible" if ok else "incompatible",
                errors or "compatible"))
        else:
            print("ok   %s%s" % (what, (": " + errors[0]) if errors else ""))
    # The real schemas: RunCommand reads its earlier version; dropping a
    # field's default from it is caught.
    here = os.path.dirname(os.path.abspath(__file__))
    avro = os.path.join(here, "..", "..", "schemas", "avro")
    with open(os.path.join(avro, "RunCommand.avsc")) as f:
        current = f.read()
    with open(os.path.join(avro, "history", "RunCommand_1.avsc")) as f:
        first = f.read()
    if check_compat.incompatibilities(first, current):
        failed += 1
        print("FAIL RunCommand does not read RunCommand_1")
    broken = json.loads(current)
    acquire = broken["fields"][6]["type"][0]
    del acquire["fields"][-1]["default"]  # requestedExpiresAt, added later
    if not check_compat.incompatibilities(first, json.dumps(broken)):
        failed += 1
        print("FAIL a new field without a default went unnoticed")
    print("%d of %d cases failed" % (failed, len(CASES) + 2))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
