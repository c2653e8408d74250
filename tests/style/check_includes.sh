#!/usr/bin/env bash
# One door per library (STYLE.md 1): a foreign header may be included only in
# the files that own that library. Prints each violation; exits 1 if any.
set -u
root=${1:-.}
cd "$root" || exit 2
bad=0
check() { # header regex, allowed path regex
  local hdr=$1 allow=$2 f
  while IFS= read -r f; do
    if ! [[ $f =~ $allow ]]; then
      echo "style: $f includes $hdr outside its door"
      bad=1
    fi
  done < <(grep -rlE "#include[[:space:]]*<$hdr" --include='*.c' --include='*.h' \
             common schemas worker drivers bridge ctl 2>/dev/null)
}
check 'libpq-fe\.h' '^worker/(store[a-z_]*|devstack)\.c$|^worker/store_sql_int\.h$'
check 'librdkafka/' '^worker/(consumer|outbox|run|devstack|kafka)[a-z_]*\.c$|^worker/kafka_int\.h$|^ctl/'
check 'avro\.h' '^schemas/'
check 'curl/' '^bridge/[^/]+\.c$|^schemas/registry\.c$'
check 'jansson\.h' '^(schemas|worker|drivers|ctl)/|^bridge/[^/]+\.c$'
exit $bad
