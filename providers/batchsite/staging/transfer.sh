#!/bin/sh
# transfer.sh: the site side of batchsite.staging.transfer (push, pull, one-file put/read).
#
# Run by Transport.sh as `sh -c <this text> batchsite MODE REMOTE_ROOT PATH...`: every
# path is checked to resolve (symlinks on the site followed, `realpath -m`) inside
# REMOTE_ROOT before anything is read or written, and every write goes to a temp name on
# the same filesystem, then is renamed into place.
#
#   transfer.sh manifest ROOT DIR
#       stdout: @@NODIR, or @@SIZES / "<size> ./<rel>" lines / @@SUMS / sha256sum lines / @@END
#   transfer.sh push ROOT DIR PARENT
#       stdin: ONE tar with ctl/list (files to install), ctl/sums (their sha256, sha256sum
#       format), ctl/check (list + delete, for the symlink check), ctl/delete, f/<file>
#       payloads. Extracted into PARENT/.batchsite-stage.XXXXXX (removed after 12 h if left
#       over), checked, then renamed into DIR. stdout: @@SUMS, the sums received, @@DONE
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
# realpath or REMOTE_ROOT cannot be resolved; 64 usage. On every failure stdin is drained,
# so the sender never blocks on a full pipe.
#
# Needs POSIX sh, awk, tar and GNU coreutils/findutils (realpath -m, sha256sum, xargs -d,
# find -printf, mv -T). No `set -e`: failures are checked where they happen.
set -u
trap '' HUP PIPE

canon() { realpath -m -- "$1"; }
inside() { case "$1" in "$2"|"${2%/}"/*) return 0;; esac; return 1; }
refuse() { cat >/dev/null; echo "batchsite: refused: $1 resolves to $2 on the site, outside remote_root $root ($root_r); a symlink on the site points outside remote_root" >&2; exit 77; }
fail_io() {
  cat >/dev/null
  case "$2" in
    *"No space left"*|*"uota"*|*ENOSPC*|*EDQUOT*) echo "@@ENOSPC $1" >&2 ;;
  esac
  printf 'batchsite: %s: %s\n' "$1" "$2" >&2
  exit 74
}
# the files staging ever looks at: never .git, __pycache__, *.pyc or an unfinished push
staged_files() {
  find . \( -name .git -o -name __pycache__ -o -name '.batchsite-stage.*' \) -prune -o -type f ! -name '*.pyc' "$@"
}

do_manifest() {  # DIR
  dir=$1
  dir_r=$(canon "$dir"); inside "$dir_r" "$root_r" || refuse "$dir" "$dir_r"
  [ -d "$dir_r" ] || { echo "@@NODIR"; exit 0; }
  cd "$dir_r" || exit 71
  echo "@@SIZES"
  staged_files -printf '%s %p\n'
  echo "@@SUMS"
  staged_files -print0 | xargs -0 -r sha256sum --
  echo "@@END"
}

do_push() {  # DIR PARENT
  dir=$1; parent=$2
  dir_r=$(canon "$dir"); inside "$dir_r" "$root_r" || refuse "$dir" "$dir_r"
  parent_r=$(canon "$parent"); inside "$parent_r" "$root_r" || refuse "$parent" "$parent_r"
  err=$(mkdir -p -- "$dir_r" "$parent_r" 2>&1) || fail_io "$dir" "$err"
  find "$parent_r" -maxdepth 1 -type d -name '.batchsite-stage.*' -mmin +720 -exec rm -rf {} + 2>/dev/null
  stage=$(mktemp -d "$parent_r/.batchsite-stage.XXXXXX" 2>&1) || fail_io "$dir" "$stage"
  trap 'rm -rf "$stage"' EXIT
  trap 'exit 130' INT TERM
  err=$(tar -xf - -C "$stage" --no-same-owner 2>&1 >/dev/null) || fail_io "$dir" "$err"
  cd "$stage" || exit 71
  if [ -s ctl/check ]; then
    n=$(wc -l < ctl/check | tr -d ' ')
    bad=$(cd "$dir_r" && xargs -d '\n' realpath -m -- < "$stage/ctl/check" | R="${root_r%/}/" N="$n" awk '
      index($0, ENVIRON["R"]) != 1 { print; bad = 1; exit }
      END { if (!bad && NR != ENVIRON["N"] + 0) print "(realpath could not resolve every destination)" }')
    [ -z "$bad" ] || refuse "a destination under $dir" "$bad"
  fi
  got=
  if [ -s ctl/list ]; then
    got=$(cd f && xargs -d '\n' sha256sum -- < ../ctl/list 2>&1) || fail_io "$dir" "$got"
    if [ "$got" != "$(cat ctl/sums)" ]; then
      echo "@@SUMS"; printf '%s\n' "$got"
      echo "batchsite: checksum mismatch after transfer into $dir; nothing was replaced" >&2
      exit 73
    fi
  fi
  last=
  while IFS= read -r rel; do
    case $rel in */*) dest_dir=$dir_r/${rel%/*} ;; *) dest_dir=$dir_r ;; esac
    if [ "$dest_dir" != "$last" ]; then
      err=$(mkdir -p -- "$dest_dir" 2>&1) || fail_io "$dest_dir" "$err"
      last=$dest_dir
    fi
    mv -fT -- "f/$rel" "$dir_r/$rel" || fail_io "$dir_r/$rel" "mv failed (files listed before it are already in place)"
  done < ctl/list
  if [ -s ctl/delete ]; then (cd "$dir_r" && xargs -d '\n' rm -f -- < "$stage/ctl/delete") || exit 72; fi
  echo "@@SUMS"; [ -z "$got" ] || printf '%s\n' "$got"
  echo "@@DONE"
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

[ $# -ge 3 ] || { cat >/dev/null; echo "usage: transfer.sh manifest|push|pull|put|read REMOTE_ROOT PATH ..." >&2; exit 64; }
mode=$1; root=$2; shift 2
command -v realpath >/dev/null 2>&1 || { cat >/dev/null; echo "batchsite: the site has no 'realpath' (GNU coreutils >= 8.15 needed for staging)" >&2; exit 78; }
if ! root_r=$(canon "$root") || [ -z "$root_r" ]; then
  cat >/dev/null; echo "batchsite: cannot resolve remote_root $root" >&2; exit 78
fi
case $mode in
  manifest) do_manifest "$@" ;;
  push) do_push "$@" ;;
  pull) do_pull "$@" ;;
  put) do_put "$@" ;;
  read) do_read "$@" ;;
  *) cat >/dev/null; echo "transfer.sh: unknown mode $mode" >&2; exit 64 ;;
esac
