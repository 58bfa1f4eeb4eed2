#!/bin/bash
# Run a command inside a memory cgroup (cgroup v1, as root) capped at LIMIT bytes, to show that an export
# fits a machine with that much RAM. Page cache counts toward the cap and the kernel reclaims it at the
# limit; anonymous memory cannot be reclaimed (no swap), so a command that needs more is OOM-killed.
# The kernel's peak RSS alone cannot show this: it also counts memory-mapped file pages it could take back.
#
#   sudo tools/in_memory_cgroup.sh autoglm 16000000000 autoglm-export android --checkpoint DIR --out OUT
#
# Prints the cgroup's peak usage, how often it hit the limit, and whether anything was OOM-killed.
set -u
if [ $# -lt 3 ]; then
  echo "usage: $0 NAME LIMIT_BYTES COMMAND [ARGS...]" >&2
  exit 2
fi
name=$1 limit=$2
shift 2
cg=/sys/fs/cgroup/memory/$name
if ! mkdir -p "$cg" 2>/dev/null || [ ! -w "$cg/memory.limit_in_bytes" ]; then
  echo "error: cannot create the memory cgroup $cg (needs cgroup v1 and root)" >&2
  exit 2
fi
echo "$limit" >"$cg/memory.limit_in_bytes"
echo $$ >"$cg/cgroup.procs"
"$@"
rc=$?
echo "cgroup $name: limit $(cat "$cg/memory.limit_in_bytes") max_usage $(cat "$cg/memory.max_usage_in_bytes") failcnt $(cat "$cg/memory.failcnt")" >&2
grep -E "^(under_oom|oom_kill) " "$cg/memory.oom_control" >&2 || true
exit $rc
