#!/bin/sh
# transfer.sh: the site side of batchsite.staging.transfer (push, pull, one-file put/read).
#
# Run by Transport.sh as `sh -c <this text> batchsite MODE REMOTE_ROOT PATH...`: every
# path is checked to resolve (symlinks on the site followed, `realpath -m`) inside
# REMOTE_ROOT before anything is read or written, and every write goes to a temp name on
# the same filesystem, then is renamed into place.
#
#   transfer.sh manifest ROOT DIR [PARENT]
#       stdout: @@NODIR, or @@SIZES / "<size> ./<rel>" lines / @@SUMS / sha256sum lines / @@END
#       Only files whose size, mtime or ctime differ from the manifest cache are hashed.
#   transfer.sh push ROOT DIR PARENT
#       stdin: ONE tar with ctl/list (files to install), ctl/sums (their sha256, sha256sum
#       format), ctl/check (list + delete, for the symlink check), ctl/delete, f/<file>
#       payloads. Extracted into PARENT/.batchsite-stage.XXXXXX (removed after 12 h if left
#       over), checked, then renamed into DIR: one `mv -t` per directory, after every
#       destination directory exists. stdout: @@SUMS, the sums received, @@DONE
#
# The manifest cache of DIR is PARENT/.batchsite-manifest.<name of DIR> (PARENT: DIR's parent
# by default, DIR itself when it is ROOT): one "<size> <mtime> <ctime> <sha256> ./<rel>" line
# a file (find -printf '%s %T@ %C@'). push updates it with the sums it verified; manifest with
# what it hashed. A file rewritten with the same size and mtime (touch -r) still has a new
# ctime, so it is hashed again (rsync's quick check, size + mtime, would skip it). Entries with
# an mtime under 2 s old are not cached. Written to a temp name, then renamed; any failure to
# write it is ignored (it is an optimisation only).
#   transfer.sh stat ROOT DIR PARENT
#       stdout: "@@RSYNC yes" or "@@RSYNC no" (is rsync on the site's PATH), "@@FREE <kB>" (free
#       space where PARENT's stage would go, `df -Pk`), then @@NODIR, or @@STAT / "<size> <mtime>
#       <rel>" lines (find -printf '%s %T@ %P') / @@END. Nothing is hashed.
#   transfer.sh rsync-recv ROOT DIR PARENT RSYNC-SERVER-ARGS...
#       The rsync server of a push (`rsync --rsync-path=<this>`, its args appended by rsync):
#       stdin/stdout are rsync's protocol, so this mode never reads stdin nor writes stdout.
#       Checks DIR, needs `rsync` on PATH (else "@@NORSYNC" on stderr, exit 79), makes the
#       stage PARENT/.batchsite-stage.XXXXXX, runs `rsync ARGS` with the stage's f/ as the
#       destination (the client passes --compare-dest=DIR: only changed files land in the
#       stage, with DIR's copy as the delta basis), checks every destination like push, and
#       renames the files into DIR like push (with python3: all of it in one process).
#       stderr: "@@STAGE <stage dir>" before rsync starts, "@@INSTALLED <n>" at the end.
#   transfer.sh unstage ROOT STAGE
#       Removes a stage dir of rsync-recv (its rsync failed and the client may have ended
#       before the script removed it).
#   transfer.sh delete ROOT DIR
#       stdin: the files to remove (relative to DIR, one a line), each checked to resolve
#       inside REMOTE_ROOT first. stdout: @@DELETED, the files removed, @@END
#   transfer.sh pull ROOT DIR [ERE...]
#       stdin: the local manifest (sha256sum format). stdout: "\n@@BATCHSITE-PULL <n>\n",
#       n bytes of manifest ("= sha rel" unchanged / "S sha rel" sent), then ONE tar of the
#       "S" files (if any). Only files whose path matches one of the EREs (all, if none).
#   transfer.sh put ROOT PATH MODE       stdin: the content; stdout: @@DONE
#   transfer.sh read ROOT PATH           stdout: "\n@@BATCHSITE-FILE\n" + the content
#
# Exit codes: 0 ok; 3 DIR (pull) / PATH (read) does not exist ("@@NODIR" / "@@NOFILE" on
# stderr); 71 cannot enter a directory; 72 local write on the site failed; 73 checksum
# mismatch after transfer (nothing replaced); 74 I/O error ("@@ENOSPC <where>" on stderr
# when the disk or quota is full); 77 a path resolves outside REMOTE_ROOT; 78 the site lacks
# realpath or REMOTE_ROOT cannot be resolved; 79 no rsync on the site (rsync-recv); 64 usage.
# On every failure stdin is drained (not in rsync-recv, where it is rsync's), so the sender
# never blocks on a full pipe.
#
# Needs POSIX sh, awk, tar and GNU coreutils/findutils (realpath -m, sha256sum, xargs -d,
# find -printf, mv -t -T). No `set -e`: failures are checked where they happen.
set -u
trap '' HUP PIPE

canon() { realpath -m -- "$1"; }
inside() { case "$1" in "$2"|"${2%/}"/*) return 0;; esac; return 1; }
# rsync-recv sets it: stdin is rsync's protocol, never read
stdin_is_rsync=
drain() { [ -n "$stdin_is_rsync" ] || cat >/dev/null; }
refuse() { drain; echo "batchsite: refused: $1 resolves to $2 on the site, outside remote_root $root ($root_r); a symlink on the site points outside remote_root" >&2; exit 77; }
fail_io() {
  drain
  case "$2" in
    *"No space left"*|*"uota"*|*ENOSPC*|*EDQUOT*) echo "@@ENOSPC $1" >&2 ;;
  esac
  printf 'batchsite: %s: %s\n' "$1" "$2" >&2
  exit 74
}
# the files staging ever looks at: never .git, __pycache__, *.pyc, an unfinished push or a manifest cache
staged_files() {
  find . \( -name .git -o -name __pycache__ -o -name '.batchsite-stage.*' -o -name '.batchsite-manifest.*' \) \
    -prune -o -type f ! -name '*.pyc' "$@"
}

# PARENT ($1; default: DIR's parent, or DIR itself when it is remote_root), checked like DIR
resolve_parent() {
  if [ -n "${1:-}" ]; then
    parent_r=$(canon "$1"); inside "$parent_r" "$root_r" || refuse "$1" "$parent_r"
  elif [ "$dir_r" = "$root_r" ]; then
    parent_r=$root_r
  else
    parent_r=${dir_r%/*}; parent_r=${parent_r:-/}
  fi
  cache_file=$parent_r/.batchsite-manifest.${dir_r##*/}
}

# merge_manifest CACHE STAT SUMS OUT: every file of STAT ("<size> <mtime> <ctime> ./<rel>")
# whose sha256 is in SUMS (sha256sum lines, trusted) or in CACHE under the same size, mtime and
# ctime goes to OUT/records (cache format), the others to OUT/stale (to hash); OUT/cache: the
# records whose mtime is over 2 s old (a write in the same clock tick would go unseen).
merge_manifest() {
  NOW=$(date +%s) OUT=$4 awk '
    function path(s, n) { while (n-- > 0) s = substr(s, index(s, " ") + 1); return s }
    BEGIN { o = ENVIRON["OUT"]; recent = ENVIRON["NOW"] - 2
            printf "" > (o "/records"); printf "" > (o "/stale"); printf "" > (o "/cache") }
    FILENAME == ARGV[1] { cached[path($0, 4)] = $1 " " $2 " " $3 " " $4; next }
    FILENAME == ARGV[2] { if (substr($0, 1, 1) == "\\") next
                          f = substr($0, 67); if (substr(f, 1, 2) != "./") f = "./" f
                          fresh[f] = substr($0, 1, 64); next }
    { f = path($0, 3); key = $1 " " $2 " " $3
      if (f in fresh) rec = key " " fresh[f] " " f
      else if ((f in cached) && index(cached[f], key " ") == 1) rec = cached[f] " " f
      else { print f > (o "/stale"); next }
      print rec > (o "/records")
      if ($2 + 0 < recent) print rec > (o "/cache") }
  ' "$1" "$3" "$2"
}

# save_cache NEW: NEW replaces the manifest cache (temp name, then rename) unless equal
save_cache() {
  cmp -s "$1" "$cache_file" 2>/dev/null && return 0
  tmp_cache=$(mktemp "$parent_r/.batchsite-stage.XXXXXX" 2>/dev/null) || return 0
  { cat "$1" > "$tmp_cache" && mv -f -- "$tmp_cache" "$cache_file"; } 2>/dev/null || rm -f -- "$tmp_cache"
}

do_manifest() {  # DIR [PARENT]
  dir=$1
  dir_r=$(canon "$dir"); inside "$dir_r" "$root_r" || refuse "$dir" "$dir_r"
  resolve_parent "${2:-}"
  [ -d "$dir_r" ] || { echo "@@NODIR"; exit 0; }
  cd "$dir_r" || exit 71
  work=$(mktemp -d "${TMPDIR:-/tmp}/batchsite-manifest.XXXXXX") || { echo "batchsite: mktemp failed in ${TMPDIR:-/tmp}" >&2; exit 72; }
  trap 'rm -rf "$work"' EXIT
  trap 'exit 130' INT TERM
  cache_in=$cache_file; [ -r "$cache_in" ] || cache_in=/dev/null
  staged_files -printf '%s %T@ %C@ %p\n' > "$work/stat" || exit 72
  merge_manifest "$cache_in" "$work/stat" /dev/null "$work" || exit 72
  if [ -s "$work/stale" ]; then
    xargs -d '\n' sha256sum -- < "$work/stale" > "$work/sums" 2>/dev/null
    merge_manifest "$cache_in" "$work/stat" "$work/sums" "$work" || exit 72
  fi
  awk 'function path(s, n) { while (n-- > 0) s = substr(s, index(s, " ") + 1); return s }
       BEGIN { print "@@SIZES" }
       { f = path($0, 4); print $1 " " f; sums[NR] = $4 "  " f }
       END { print "@@SUMS"; for (i = 1; i <= NR; i++) print sums[i]; print "@@END" }' "$work/records"
  save_cache "$work/cache"
}

# check_destinations LIST: every path of the file LIST (relative to DIR, one a line) resolves,
# symlinks on the site followed, inside remote_root; else refused (exit 77)
check_destinations() {
  n=$(wc -l < "$1" | tr -d ' ')
  bad=$(cd "$dir_r" && xargs -d '\n' realpath -m -- < "$1" | R="${root_r%/}/" N="$n" awk '
    index($0, ENVIRON["R"]) != 1 { print; bad = 1; exit }
    END { if (!bad && NR != ENVIRON["N"] + 0) print "(realpath could not resolve every destination)" }')
  [ -z "$bad" ] || refuse "a destination under $dir" "$bad"
}

# new_stage: mkdir DIR and PARENT, remove stage dirs left over for 12 h, make $stage (removed on exit)
new_stage() {
  err=$(mkdir -p -- "$dir_r" "$parent_r" 2>&1) || fail_io "$dir" "$err"
  find "$parent_r" -maxdepth 1 -name '.batchsite-stage.*' -mmin +720 -exec rm -rf {} + 2>/dev/null
  stage=$(mktemp -d "$parent_r/.batchsite-stage.XXXXXX" 2>&1) || fail_io "$dir" "$stage"
  trap 'rm -rf "$stage"' EXIT
  trap 'exit 130' INT TERM
}

# switch_over: rename the verified files of the stage ($stage/f) into DIR. Before the first
# rename, no destination file is a directory and no destination directory is a file. A
# directory missing on the site is renamed whole (an empty DIR: the whole stage, one rename);
# else python3 renames every file in one process, or, without python3, one `mv -t` per
# directory. Each file is renamed, never copied: none is ever half-written.
switch_over() {
  (cd f && find . -mindepth 1 -type d) > ctl/dirs || exit 72
  # shellcheck disable=SC2016  # $1 is expanded by the inner sh
  taken=$(cd "$dir_r" && {
    xargs -d '\n' -r sh -c 'for f; do [ ! -d "$f" ] || echo "$f"; done' sh < "$stage/ctl/list"
    xargs -d '\n' -r sh -c 'for d; do [ ! -e "$d" ] || [ -d "$d" ] || echo "$d"; done' sh < "$stage/ctl/dirs"
  })
  if [ -n "$taken" ]; then
    echo "batchsite: $dir_r/$(echo "$taken" | head -n 1) on the site is in the way of the push (a directory where a file goes, or a file where a directory goes); nothing was replaced: remove or rename it on the site" >&2
    exit 72
  fi
  if [ "$dir_r" != "$root_r" ] && [ -z "$(ls -A -- "$dir_r")" ] && rmdir -- "$dir_r" 2>/dev/null; then
    mv -T -- f "$dir_r" && return 0
    mkdir -p -- "$dir_r" || fail_io "$dir_r" "cannot create it again"
  fi
  if command -v python3 >/dev/null 2>&1; then
    # one process renames every file (a `mv` per directory costs ~20 ms each on a busy node)
    err=$(python3 -I -S -c '
import os, sys
dest = sys.argv[1]
for rel in sys.stdin.read().splitlines():
    os.makedirs(os.path.dirname(os.path.join(dest, rel)), exist_ok=True)
    os.replace("f/" + rel, os.path.join(dest, rel))
' "$dir_r" < ctl/list 2>&1) || fail_io "$dir_r" "rename failed (files listed before it are already in place): $err"
    return 0
  fi
  find f -maxdepth 1 -type f -exec mv -f -t "$dir_r" -- {} + ||
    fail_io "$dir_r" "mv failed (nothing of this push was in place yet)"
  moved=
  while IFS= read -r sub; do
    case $sub in "$moved"/*) continue ;; esac  # inside a directory renamed whole
    if [ ! -e "$dir_r/$sub" ]; then
      mv -T -- "f/$sub" "$dir_r/$sub" || fail_io "$dir_r/$sub" "mv failed (files of the directories before it are already in place)"
      moved=$sub
      continue
    fi
    find "f/$sub" -maxdepth 1 -type f -exec mv -f -t "$dir_r/$sub" -- {} + ||
      fail_io "$dir_r/$sub" "mv failed (files of the directories before it are already in place)"
  done < ctl/dirs
}

do_push() {  # DIR PARENT
  dir=$1
  dir_r=$(canon "$dir"); inside "$dir_r" "$root_r" || refuse "$dir" "$dir_r"
  resolve_parent "$2"
  new_stage
  err=$(tar -xf - -C "$stage" --no-same-owner 2>&1 >/dev/null) || fail_io "$dir" "$err"
  cd "$stage" || exit 71
  [ ! -s ctl/check ] || check_destinations "$stage/ctl/check"
  got=
  if [ -s ctl/list ]; then
    got=$(cd f && xargs -d '\n' sha256sum -- < ../ctl/list 2>&1) || fail_io "$dir" "$got"
    if [ "$got" != "$(cat ctl/sums)" ]; then
      echo "@@SUMS"; printf '%s\n' "$got"
      echo "batchsite: checksum mismatch after transfer into $dir; nothing was replaced" >&2
      exit 73
    fi
    switch_over
  fi
  if [ -s ctl/delete ]; then (cd "$dir_r" && xargs -d '\n' rm -f -- < "$stage/ctl/delete") || exit 72; fi
  (cd "$dir_r" && staged_files -printf '%s %T@ %C@ %p\n') > stat 2>/dev/null &&
    cache_in=$cache_file && { [ -r "$cache_in" ] || cache_in=/dev/null; } &&
    merge_manifest "$cache_in" stat ctl/sums "$stage" 2>/dev/null && save_cache cache
  echo "@@SUMS"; [ -z "$got" ] || printf '%s\n' "$got"
  echo "@@DONE"
}

do_rsync_recv() {  # DIR PARENT RSYNC-SERVER-ARGS...
  dir=$1
  dir_r=$(canon "$dir"); inside "$dir_r" "$root_r" || refuse "$dir" "$dir_r"
  resolve_parent "$2"; shift 2
  command -v rsync >/dev/null 2>&1 || { echo "@@NORSYNC: no rsync on the site's PATH" >&2; exit 79; }
  [ $# -ge 2 ] || { echo "transfer.sh rsync-recv: no rsync server arguments" >&2; exit 64; }
  new_stage
  mkdir -- "$stage/f" "$stage/ctl" || exit 72
  # the client removes it (unstage) if rsync fails: the rsync client can end before this script
  echo "@@STAGE $stage" >&2
  # the last argument (the destination the client named) becomes the stage
  n=$#; i=0
  for arg; do
    i=$((i + 1))
    if [ "$i" -lt "$n" ]; then set -- "$@" "$arg"; else set -- "$@" "$stage/f"; fi
  done
  shift "$n"
  rsync "$@" || exit $?
  cd "$stage" || exit 71
  if command -v python3 >/dev/null 2>&1; then
    install_with_python
  else
    (cd f && find . -type f -printf '%P\n') > ctl/list || exit 72
    if [ -s ctl/list ]; then
      check_destinations "$stage/ctl/list"
      switch_over
    fi
    echo "@@INSTALLED $(wc -l < ctl/list | tr -d ' ')" >&2
  fi
}

# install_with_python: what check_destinations + switch_over do for the stage's f/, in ONE
# process (each process costs 10-20 ms on a busy login node): every destination resolves inside
# remote_root, nothing is in the way, then the files are renamed (an empty DIR: the whole stage).
install_with_python() {
  out=$(python3 -I -S -c '
import os, sys
root, dest = sys.argv[1], sys.argv[2]
files, dirs = [], []
for here, subdirs, names in os.walk("f"):
    rel = os.path.relpath(here, "f")
    dirs += [os.path.normpath(os.path.join(rel, d)) for d in subdirs]
    files += [os.path.normpath(os.path.join(rel, n)) for n in names]
for rel in files:
    real = os.path.realpath(os.path.join(dest, rel))
    if not real.startswith(root.rstrip("/") + "/"):
        print(real)
        sys.exit(77)
in_the_way = [rel for rel in files if os.path.isdir(os.path.join(dest, rel))] + [
    rel for rel in dirs if os.path.lexists(os.path.join(dest, rel)) and not os.path.isdir(os.path.join(dest, rel))]
if in_the_way:
    print(in_the_way[0])
    sys.exit(75)
if files and dest != root and not os.listdir(dest):
    os.rmdir(dest)
    os.rename("f", dest)
else:
    for rel in files:
        os.makedirs(os.path.dirname(os.path.join(dest, rel)), exist_ok=True)
        os.replace(os.path.join("f", rel), os.path.join(dest, rel))
print(len(files))
' "$root_r" "$dir_r" 2>&1)
  case $? in
    0) echo "@@INSTALLED $out" >&2 ;;
    77) refuse "a destination under $dir" "$out" ;;
    75) echo "batchsite: $dir_r/$out on the site is in the way of the push (a directory where a file goes, or a file where a directory goes); nothing was replaced: remove or rename it on the site" >&2
        exit 72 ;;
    *) fail_io "$dir_r" "rename failed (files renamed before it are already in place): $out" ;;
  esac
}

do_unstage() {  # STAGE
  stage_r=$(canon "$1"); inside "$stage_r" "$root_r" || refuse "$1" "$stage_r"
  case ${stage_r##*/} in
    .batchsite-stage.*) rm -rf -- "$stage_r" ;;
    *) echo "batchsite: $1 is not a stage dir of a push" >&2; exit 64 ;;
  esac
}

do_stat() {  # DIR PARENT
  dir=$1
  dir_r=$(canon "$dir"); inside "$dir_r" "$root_r" || refuse "$dir" "$dir_r"
  resolve_parent "$2"
  if command -v rsync >/dev/null 2>&1; then echo "@@RSYNC yes"; else echo "@@RSYNC no"; fi
  on=$parent_r; while [ -n "$on" ] && [ ! -d "$on" ]; do on=${on%/*}; done
  echo "@@FREE $(df -Pk -- "${on:-/}" 2>/dev/null | awk 'NR == 2 { print $4 }')"
  [ -d "$dir_r" ] || { echo "@@NODIR"; exit 0; }
  cd "$dir_r" || exit 71
  echo "@@STAT"
  staged_files -printf '%s %T@ %P\n' || exit 72
  echo "@@END"
}

do_delete() {  # DIR; stdin: the files to remove
  dir=$1
  dir_r=$(canon "$dir"); inside "$dir_r" "$root_r" || refuse "$dir" "$dir_r"
  work=$(mktemp -d "${TMPDIR:-/tmp}/batchsite-delete.XXXXXX") || { cat >/dev/null; echo "batchsite: mktemp failed in ${TMPDIR:-/tmp}" >&2; exit 72; }
  trap 'rm -rf "$work"' EXIT
  trap 'exit 130' INT TERM
  cat > "$work/delete" || exit 72
  : > "$work/removed"
  if [ -d "$dir_r" ] && [ -s "$work/delete" ]; then
    cd "$dir_r" || exit 71
    check_destinations "$work/delete"
    # shellcheck disable=SC2016  # $f is expanded by the inner sh
    xargs -d '\n' -r sh -c 'for f; do [ ! -f "$f" ] || { rm -f -- "$f" && printf "%s\n" "$f"; }; done' sh \
      < "$work/delete" > "$work/removed" || exit 72
  fi
  echo "@@DELETED"; cat "$work/removed"; echo "@@END"
}

do_pull() {  # DIR [ERE...]
  dir=$1; shift
  dir_r=$(canon "$dir"); inside "$dir_r" "$root_r" || refuse "$dir" "$dir_r"
  [ -d "$dir_r" ] || { cat >/dev/null; echo "@@NODIR $dir" >&2; exit 3; }
  work=$(mktemp -d "${TMPDIR:-/tmp}/batchsite-pull.XXXXXX") || { cat >/dev/null; echo "batchsite: mktemp failed in ${TMPDIR:-/tmp}" >&2; exit 72; }
  trap 'rm -rf "$work"' EXIT
  trap 'exit 130' INT TERM
  cat > "$work/local" || exit 72
  # the patterns go to awk through the environment: awk -v would interpret backslashes
  i=0; for pattern in "$@"; do i=$((i + 1)); export "BSP$i=$pattern"; done; export BSPN=$i
  cd "$dir_r" || exit 71
  staged_files -print | awk '
    BEGIN { n = ENVIRON["BSPN"] + 0 }
    { f = $0; sub(/^\.\//, "", f); ok = (n == 0)
      for (i = 1; i <= n && !ok; i++) if (f ~ ENVIRON["BSP" i]) ok = 1
      if (ok) print }' > "$work/selected" || exit 72
  xargs -d '\n' -r sha256sum -- < "$work/selected" > "$work/remote" 2>/dev/null
  M="$work/manifest" W="$work/want" awk '
    BEGIN { m = ENVIRON["M"]; w = ENVIRON["W"] }
    FILENAME == ARGV[1] { loc[substr($0, 67)] = substr($0, 1, 64); next }
    /^\\/ { next }
    { h = substr($0, 1, 64); f = substr($0, 67); sub(/^\.\//, "", f)
      if ((f in loc) && loc[f] == h) { print "= " h " " f > m }
      else { print "S " h " " f > m; print "./" f > w } }
  ' "$work/local" "$work/remote" || exit 72
  touch "$work/manifest"
  printf '\n@@BATCHSITE-PULL %s\n' "$(wc -c < "$work/manifest" | tr -d ' ')"
  cat "$work/manifest"
  if [ -s "$work/want" ]; then
    tar -cf - -C "$dir_r" -T "$work/want"
    rc=$?; [ $rc -le 1 ] || echo "batchsite: tar exited $rc (files vanished while pulling?)" >&2
  fi
  exit 0
}

do_put() {  # PATH MODE
  path=$1; file_mode=$2
  path_r=$(canon "$path"); inside "$path_r" "$root_r" || refuse "$path" "$path_r"
  [ "$path_r" != "$root_r" ] || { cat >/dev/null; echo "batchsite: $path is remote_root itself, not a file" >&2; exit 72; }
  dest_dir=${path_r%/*}; [ -n "$dest_dir" ] || dest_dir=/
  err=$(mkdir -p -- "$dest_dir" 2>&1) || fail_io "$dest_dir" "$err"
  umask 077
  tmp_file=$(mktemp "$dest_dir/.batchsite-put.XXXXXX" 2>&1) || fail_io "$path" "$tmp_file"
  trap 'rm -f "$tmp_file"' EXIT
  err=$(cat 2>&1 > "$tmp_file") || fail_io "$path" "$err"
  chmod "$file_mode" "$tmp_file" || exit 72
  err=$(mv -fT -- "$tmp_file" "$path_r" 2>&1) || fail_io "$path" "$err"
  echo "@@DONE"
}

do_read() {  # PATH
  path=$1
  path_r=$(canon "$path"); inside "$path_r" "$root_r" || refuse "$path" "$path_r"
  [ -f "$path_r" ] || { echo "@@NOFILE $path" >&2; exit 3; }
  printf '\n@@BATCHSITE-FILE\n'
  cat -- "$path_r"
}

[ "${1:-}" != rsync-recv ] || stdin_is_rsync=1
[ $# -ge 3 ] || { drain; echo "usage: transfer.sh manifest|push|rsync-recv|delete|pull|put|read REMOTE_ROOT PATH ..." >&2; exit 64; }
mode=$1; root=$2; shift 2
command -v realpath >/dev/null 2>&1 || { drain; echo "batchsite: the site has no 'realpath' (GNU coreutils >= 8.15 needed for staging)" >&2; exit 78; }
if ! root_r=$(canon "$root") || [ -z "$root_r" ]; then
  drain; echo "batchsite: cannot resolve remote_root $root" >&2; exit 78
fi
case $mode in
  manifest) do_manifest "$@" ;;
  push) do_push "$@" ;;
  rsync-recv) do_rsync_recv "$@" ;;
  stat) do_stat "$@" ;;
  unstage) do_unstage "$@" ;;
  delete) do_delete "$@" ;;
  pull) do_pull "$@" ;;
  put) do_put "$@" ;;
  read) do_read "$@" ;;
  *) cat >/dev/null; echo "transfer.sh: unknown mode $mode" >&2; exit 64 ;;
esac
