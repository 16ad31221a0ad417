#!/usr/bin/env bash
# `make fuzz`: builds the AFL++ targets of fuzz/ with cargo-afl (stable toolchain), runs each
# for FUZZ_SECONDS (default 60) one after the other, and prints per target the executions,
# the corpus entries (paths) AFL found, and the crashes and hangs it saved. Exits 1 when any
# target saved a crash or a hang (they are listed: copy each into fuzz/regressions/<target>/,
# fix the parser, and tests/fuzz_regressions.rs replays it from then on).
#
#   FUZZ_SECONDS=600 make fuzz                 # ten minutes a target
#   FUZZ_TARGETS="control sdp_offer" make fuzz  # some targets only
#
# The queue AFL grows lives in fuzz/out/<target>/ (not committed) and the next run resumes
# from it; fuzz/corpus/<target>/ is the small committed seed corpus. scripts/install-deps.sh
# --fuzz (run by `make fuzz` first) installs cargo-afl and its AFL++ runtime.
set -euo pipefail
cd "$(dirname "$0")/.."

seconds=${FUZZ_SECONDS:-60}
targets=${FUZZ_TARGETS:-"control lmnt_server_frame lmnt_client_frame local_tts_init sdp_offer caller_rtp dtmf"}
# Its own target dir: AFL instrumentation changes every crate's flags, so sharing the main
# build's directory would rebuild both each time.
target_dir=${CARGO_TARGET_DIR:-$PWD/target}/afl

# What AFL++ is told, and why:
# - AFL_SKIP_CPUFREQ: VMs and containers have no cpufreq governor AFL could check or set.
# - AFL_I_DONT_CARE_ABOUT_MISSING_CRASHES: Debian's core_pattern pipes cores to
#   systemd-coredump, which AFL otherwise refuses (changing it needs root); crashes are still
#   caught from the target's abort, only later.
# - AFL_NO_AFFINITY: the build machines are shared; do not pin a core others need.
# - AFL_NO_UI: plain status lines instead of the full-screen UI.
# - AFL_AUTORESUME: a second run resumes the queue in fuzz/out instead of refusing to start.
export AFL_SKIP_CPUFREQ=1 AFL_I_DONT_CARE_ABOUT_MISSING_CRASHES=1 AFL_NO_AFFINITY=1 \
  AFL_NO_UI=1 AFL_AUTORESUME=1

(cd fuzz && CARGO_TARGET_DIR=$target_dir cargo afl build --release)

failed=0
summary=()
for t in $targets; do
  [[ -d fuzz/corpus/$t ]] || { echo "fuzz: no target $t (no fuzz/corpus/$t)" >&2; exit 64; }
  dict=fuzz/dict/json.dict
  [[ $t == sdp_offer ]] && dict=fuzz/dict/sdp.dict
  [[ $t == caller_rtp || $t == dtmf ]] && dict=
  out=fuzz/out/$t
  mkdir -p "$out"
  echo "fuzz: $t for ${seconds} s"
  cargo afl fuzz -i "fuzz/corpus/$t" -o "$out" -V "$seconds" ${dict:+-x "$dict"} \
    "$target_dir/release/$t" >"$out.log" 2>&1 || {
    echo "fuzz: afl-fuzz failed for $t; the end of $out.log:" >&2
    tail -n 20 "$out.log" >&2
    exit 1
  }
  stats=$out/default/fuzzer_stats
  stat() { awk -F' *: *' -v k="$1" '$1 == k { print $2 }' "$stats"; }
  summary+=("$(printf '%-18s %12s %8s %8s %8s %8s' "$t" "$(stat execs_done)" \
    "$(stat corpus_count)" "$(stat saved_crashes)" "$(stat saved_hangs)" "$(stat execs_per_sec)")")
  if [[ $(stat saved_crashes) != 0 || $(stat saved_hangs) != 0 ]]; then
    failed=1
    ls "$out"/default/crashes/id:* "$out"/default/hangs/id:* 2>/dev/null | sed 's/^/  /'
  fi
done

printf '%-18s %12s %8s %8s %8s %8s\n' target execs paths crashes hangs execs/s
printf '%s\n' "${summary[@]}"
exit "$failed"
