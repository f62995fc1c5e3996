#!/bin/sh
# submit_once.sh: the submit-once protocol of batchsite.site.Site ("adopt before submit").
#
# Site.submit runs `submit` in ONE remote command, so that no crash of ours can split it:
#
# 1. if <workdir>/.batchsite/submitted exists, print it (re-attach, nothing submitted);
# 2. else take <workdir>/.batchsite/lock (mkdir is atomic; lock/owner names the taker:
#    "<host> <pid> <epoch>", lock/header what it submits) or wait for the other submitter
#    (WAIT_S, Site.lock_wait_seconds);
# 3. unpack the rendered files (a tar on stdin), run submit.sh;
# 4. write its stdout + the record header (HEADER) to `submitted` (temp name, rename) BEFORE
#    anything is printed back, so the job id is on the site before any caller can see it.
#
# The record is: line 1 the HEADER Site.submit gives (what was submitted: "<script hash>
# spec=<hash of the caller's round spec> attempt=<n> indices=<Slurm array notation>"),
# line 2 the epoch of the submission, then submit.sh's stdout. Attempt n >= 2 is a
# resubmission (`set-aside`): the records of attempts 1..n-1 are submitted.<k> and the
# exit files their units wrote are in status.<k>/, so the units an attempt did not run
# are accounted for by the earlier attempts.
#
# A lock without a record is never removed blindly: submit.sh may have submitted something
# before it failed or died. `submit` exits
#
# * the submit's own exit code when submit.sh fails (74-78 become 1, they are ours); it
#   keeps the lock and writes `failed` (stderr + stdout of that attempt, also appended to
#   failed.log);
# * 76 (LOCK_FAILED) at once when it finds the lock, a `failed` marker and no record;
# * 75 (LOCK_STALE) when it finds the lock without marker or record and none appears while
#   it waits (past WAIT_S only while the owner still submits, at most 3 * WAIT_S; at once
#   when the owner is a dead process of this host): the other submitter died half-way;
# * 74 when it submitted but could not write the record (the ids are in the error text);
# * 70 / 71: the workdir could not be created / the round files could not be unpacked.
# * 64: usage (unknown mode, missing arguments).
#
# On 75/76 Site.submit asks the scheduler once (Backend.render_find_script: the jobs carry
# spec.key as their name). Found: it records the found ids with `write-found` (same format,
# atomically) and returns the submission with adopted=True. Definitely not submitted: it
# removes lock + marker with `clear` (only if the lock still has the owner it saw) and runs
# `submit` one more time. A backend that cannot search: 76 is retried the same way (the
# local runner's own lock makes a second runner impossible), 75 is an error that says
# what to check.
#
# Site.resubmit (DAGMan rescue, Slurm repair) keeps the record as submitted.<n> with
# `set-aside` and runs the same flow again.
#
# Credentials (the connection's x509_proxy extra) ride in the same command, before step 1
# (a re-attached round's jobs get a renewed proxy too): `submit` gets the site copy's path
# and the sha256 of the local proxy; when the copy on the site has another content it
# exits 77 (CRED_STALE, "@@CRED_STALE" on stdout) before touching anything, and
# Site.submit runs it once more with the content as the first line of stdin (base64;
# never in argv, which `ps` shows to everyone). The copy is written with umask 077 under
# a temp name in a 0700 directory, checked against the hash, then renamed: no window with
# wider permissions, no partial file under the final name. An unchanged proxy is never
# sent again. Failures exit 78 (CRED_FAILED).
#
# Usage (POSIX sh; Site runs it as `sh -c <this text> batchsite MODE ARGS...`):
# Test hook, OFF in production: when BATCHSITE_TEST_PAUSE_AFTER_ACCEPT names a file, `submit`
# writes its pid to <file>.accepted right after submit.sh succeeded (the scheduler accepted
# the jobs) and waits until <file> exists before writing the record. The fault tests
# (tests/reliability/test_submit_faults.py) set it in a test-only env_script and kill the
# submitting side in exactly that window. Nothing sets it outside those tests.
#
#   submit_once.sh submit      WORKDIR HEADER KEY WAIT_S [CRED_PATH CRED_SHA256 CRED_SENT]
#       stdin: [the credential as one base64 line, when CRED_SENT=1] + a tar of the round files
#       stdout: "@@ADOPT" or "@@SUBMITTED", then the record (header, epoch, submit.sh's stdout);
#       "@@LOCK <owner>" before exit 75/76
#   submit_once.sh write-found WORKDIR HEADER OWNER_SEEN
#       stdin: what submit.sh would have printed. Never replaces a record. The record's
#       header is the lock's (what the lost submission submitted: lock/header), HEADER
#       only for a lock taken before lock/header existed.
#       stdout: "@@ADOPT" + the record, or "@@CHANGED" (the lock changed hands)
#   submit_once.sh clear       WORKDIR OWNER_SEEN stale|failed
#       removes lock + failed marker while the lock has OWNER_SEEN and (stale) that owner no
#       longer submits / (failed) its marker is there.
#       stdout: @@CLEARED, @@RECORDED, @@CHANGED or "@@BUSY <owner>"
#   submit_once.sh set-aside   WORKDIR REASON
#       stdin: the record expected (without the @@ADOPT line). Keeps it as submitted.<n>
#       (and status/ as status.<n>), removes the lock, logs REASON in resubmit.log.
#       stdout: "@@MOVED <n>" or "@@CHANGED"; exit 72 when the record cannot be moved
#
# No `set -e`: every failure is checked where it happens and mapped to an exit code above.
set -u
trap '' HUP PIPE

bs_owner() {  # sets $o: the lock's owner line, '' when there is none
  o=
  if [ -f "$meta/lock/owner" ]; then read -r o < "$meta/lock/owner"; fi
}

bs_busy() {  # the lock's owner may still be submitting: its shell lives here, or it is on another host and < 10 min old
  bs_owner
  # shellcheck disable=SC2086 # split the owner line "<host> <pid> <epoch>" into $1 $2 $3
  set -- $o
  [ -n "${2:-}" ] || return 1
  if [ "$1" = "$(uname -n)" ]; then
    kill -0 "$2" 2>/dev/null || return 1
    [ -r "/proc/$2/cmdline" ] || return 0
    tr '\000' '\n' < "/proc/$2/cmdline" | grep -qxF -- "$wd"
    return
  fi
  [ $(( $(date +%s) - ${3:-0} )) -lt 600 ]
}

bs_owner_dead() {  # the lock names an owner, and that owner is a process of this host that is gone
  bs_owner
  # shellcheck disable=SC2086 # split the owner line "<host> <pid> <epoch>" into $1 $2 $3
  set -- $o
  [ -n "${2:-}" ] && [ "$1" = "$(uname -n)" ] && ! bs_busy
}

bs_mutex() {  # serialises the modes that remove a lock or a record (not the submissions)
  i=0
  until mkdir "$meta/mutex" 2>/dev/null; do
    i=$((i + 1))
    if [ "$i" -gt 100 ]; then rmdir "$meta/mutex" 2>/dev/null; i=0; fi  # a holder died
    sleep 0.1
  done
}

bs_credential() {  # CRED_PATH ('' = none) CRED_SHA256 CRED_SENT; a subshell with umask 077, the content never echoed
  cred=${1:-}; cred_sha=${2:-}; cred_sent=${3:-0}
  [ -n "$cred" ] || return 0
  (
    tmp_cred=
    trap 'rm -f "$tmp_cred"' EXIT
    bs_cred_fail() { cat >/dev/null; echo "batchsite: credential $cred: $1" >&2; exit 78; }
    cred_dir=${cred%/*}
    { [ -L "$cred_dir" ] || [ -L "$cred" ]; } && bs_cred_fail "$cred_dir or the file is a symbolic link; refusing to write a credential through it"
    [ -d "$cred" ] && bs_cred_fail "is a directory"
    mkdir -p "${cred_dir%/*}" || bs_cred_fail "cannot create ${cred_dir%/*}"
    umask 077
    mkdir -p "$cred_dir" || bs_cred_fail "cannot create $cred_dir"
    chmod 700 "$cred_dir" || bs_cred_fail "cannot make $cred_dir private (chmod 700; owned by another user?)"
    current_sha=
    [ -f "$cred" ] && current_sha=$(sha256sum < "$cred" 2>/dev/null)
    current_sha=${current_sha%% *}
    if [ "$cred_sent" = 1 ]; then
      IFS= read -r b64 || bs_cred_fail "its content did not arrive"
      if [ "$current_sha" != "$cred_sha" ]; then
        tmp_cred=$(mktemp "$cred_dir/.incoming.XXXXXX") || bs_cred_fail "mktemp failed in $cred_dir (disk full?)"
        printf '%s\n' "$b64" | base64 -d > "$tmp_cred" || bs_cred_fail "could not write it (disk full? base64 missing?)"
        got=$(sha256sum < "$tmp_cred")
        [ "${got%% *}" = "$cred_sha" ] || bs_cred_fail "checksum mismatch after transfer"
        { chmod 600 "$tmp_cred" && mv -fT "$tmp_cred" "$cred"; } || bs_cred_fail "could not rename it into place"
        tmp_cred=
      fi
    elif [ "$current_sha" != "$cred_sha" ]; then
      cat >/dev/null; echo "@@CRED_STALE"; exit 77
    fi
    chmod 600 "$cred" || bs_cred_fail "cannot chmod 600 (owned by another user?)"
  ) || exit $?
}

bs_submit() {  # WORKDIR HEADER KEY WAIT_S [CRED_PATH CRED_SHA256 CRED_SENT]
  header=$2; key=$3; wait_s=$4
  bs_credential "${5:-}" "${6:-}" "${7:-0}"
  mkdir -p "$meta" || exit 70
  if [ -s "$rec" ]; then echo "@@ADOPT"; cat "$rec"; cat >/dev/null; exit 0; fi
  if ! mkdir "$meta/lock" 2>/dev/null; then
    cat >/dev/null
    i=0
    while :; do
      if [ -s "$rec" ]; then echo "@@ADOPT"; cat "$rec"; exit 0; fi
      if [ -f "$meta/failed" ]; then
        bs_owner; echo "@@LOCK $o"
        echo "batchsite: a submission of $key failed and left $meta/lock; its output ($meta/failed):" >&2
        cat "$meta/failed" >&2
        exit 76
      fi
      # a dead owner will never write the record: no need to wait for it
      bs_owner_dead && break
      # past the wait, only while the owner still submits (at most 3 times as long)
      if [ "$i" -ge "$wait_s" ]; then { [ "$i" -lt $((wait_s * 3)) ] && bs_busy; } || break; fi
      sleep 1; i=$((i + 1))
    done
    bs_owner; echo "@@LOCK $o"
    echo "batchsite: $meta/lock (taken by: ${o:-unknown}) exists but no submission record after $i s: a submission of this round may have died half-way. Check the scheduler for jobs named $key before removing $meta/lock to allow a new submission." >&2
    exit 75
  fi
  printf '%s %s %s\n' "$(uname -n)" "$$" "$(date +%s)" > "$meta/lock/owner"
  printf '%s\n' "$header" > "$meta/lock/header"
  rm -f "$meta/failed"
  tar -xf - -C "$wd" || { rm -f "$meta/lock/owner" "$meta/lock/header"; rmdir "$meta/lock"; echo "batchsite: could not unpack round files into $wd" >&2; exit 71; }
  out=$(cd "$wd" && sh ./submit.sh 2>"$meta/submit.err"); rc=$?
  if [ $rc -ne 0 ]; then
    # keep the lock: submit.sh may have submitted something before it failed
    { echo "submit.sh exited $rc at $(date +%s)"; cat "$meta/submit.err"; printf '%s\n' "$out"; } > "$meta/failed.tmp.$$"
    cat "$meta/failed.tmp.$$" >> "$meta/failed.log"
    mv -f "$meta/failed.tmp.$$" "$meta/failed"
    echo "batchsite: submit.sh exited $rc" >&2; cat "$meta/submit.err" >&2; printf '%s\n' "$out" >&2
    case $rc in 74|75|76|77|78) rc=1 ;; esac  # ours
    exit $rc
  fi
  if [ -n "${BATCHSITE_TEST_PAUSE_AFTER_ACCEPT:-}" ]; then  # test hook (header): the accepted-but-unrecorded window
    echo "$$" > "$BATCHSITE_TEST_PAUSE_AFTER_ACCEPT.accepted"
    while [ ! -e "$BATCHSITE_TEST_PAUSE_AFTER_ACCEPT" ]; do sleep 0.2; done
  fi
  if ! { printf '%s\n%s\n%s\n' "$header" "$(date +%s)" "$out" > "$rec.tmp.$$" && mv -f "$rec.tmp.$$" "$rec"; }; then
    rm -f "$rec.tmp.$$"
    echo "batchsite: submitted, but could not write $rec (lock kept); submit.sh printed: $out" >&2
    exit 74
  fi
  rm -f "$meta/failed"
  echo "@@SUBMITTED"; cat "$rec"
}

bs_write_found() {  # WORKDIR HEADER OWNER_SEEN; stdin: what submit.sh would have printed
  header=$2; owner_seen=$3
  found=$(cat)
  bs_mutex
  if [ -s "$rec" ]; then rmdir "$meta/mutex"; echo "@@ADOPT"; cat "$rec"; exit 0; fi
  bs_owner
  if [ ! -d "$meta/lock" ] || [ "$o" != "$owner_seen" ]; then rmdir "$meta/mutex"; echo "@@CHANGED"; exit 0; fi
  # what the lost submission submitted (a rescue: its attempt and narrowed units), not the caller's guess
  if [ -s "$meta/lock/header" ]; then read -r header < "$meta/lock/header"; fi
  if ! { printf '%s\n%s\n%s\n%s\n' "$header" "$(date +%s)" "# batchsite: found by scheduler name, the submission's own output was lost" "$found" > "$rec.tmp.$$" && mv -f "$rec.tmp.$$" "$rec"; }; then
    rm -f "$rec.tmp.$$"; rmdir "$meta/mutex"
    echo "batchsite: could not write $rec; the scheduler has: $found" >&2; exit 74
  fi
  rm -f "$meta/failed"; rmdir "$meta/mutex"
  echo "@@ADOPT"; cat "$rec"
}

bs_clear() {  # WORKDIR OWNER_SEEN stale|failed
  owner_seen=$2; clear_mode=$3
  bs_mutex
  bs_owner
  if [ -s "$rec" ]; then echo "@@RECORDED"
  elif [ ! -d "$meta/lock" ] || [ "$o" != "$owner_seen" ]; then echo "@@CHANGED"
  elif [ "$clear_mode" = failed ] && [ ! -f "$meta/failed" ]; then echo "@@CHANGED"
  elif [ "$clear_mode" != failed ] && bs_busy; then echo "@@BUSY $o"
  else rm -f "$meta/failed" "$meta/lock/owner" "$meta/lock/header"; rmdir "$meta/lock" && echo "@@CLEARED"
  fi
  rmdir "$meta/mutex"
}

bs_set_aside() {  # WORKDIR REASON; stdin: the record expected
  reason=$2
  expected=$(cat)
  bs_mutex
  current=
  [ -f "$rec" ] && current=$(cat "$rec")
  if [ ! -s "$rec" ] || [ "$current" != "$expected" ]; then rmdir "$meta/mutex"; echo "@@CHANGED"; exit 0; fi
  n=1; while [ -e "$rec.$n" ]; do n=$((n + 1)); done
  mv "$rec" "$rec.$n" || { rmdir "$meta/mutex"; exit 72; }
  # the last attempt's exit files must not speak for the rescue round's units
  [ -d "$wd/status" ] && mv "$wd/status" "$wd/status.$n"
  printf '%s %s %s\n' "$n" "$(date +%s)" "$reason" >> "$meta/resubmit.log"
  rm -f "$meta/failed" "$meta/lock/owner" "$meta/lock/header"; rmdir "$meta/lock" 2>/dev/null
  rmdir "$meta/mutex"
  echo "@@MOVED $n"
}

mode=${1:-}
[ $# -ge 2 ] || { echo "usage: submit_once.sh submit|write-found|clear|set-aside WORKDIR ..." >&2; exit 64; }
shift
wd=$1; meta="$wd/.batchsite"; rec="$meta/submitted"
case $mode in
  submit) bs_submit "$@" ;;
  write-found) bs_write_found "$@" ;;
  clear) bs_clear "$@" ;;
  set-aside) bs_set_aside "$@" ;;
  *) echo "submit_once.sh: unknown mode $mode" >&2; exit 64 ;;
esac
