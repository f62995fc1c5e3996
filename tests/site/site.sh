#!/usr/bin/env bash
# Real batchsite test site on this machine: sshd on loopback + Slurm (slurmctld, slurmd,
# optionally slurmdbd + MariaDB for sacct) + optionally an HTCondor personal pool, all used
# by the unprivileged test user "bsite" over real SSH; and PostgreSQL on loopback (Airflow's
# metadata DB, the campaign ledger). Must run as root (Debian 12).
#
# Usage: site.sh COMMAND
#   start [--no-accounting] [--batch-only]
#                            install missing packages, start sshd, munged, (mariadb, slurmdbd),
#                            slurmctld, slurmd, postgres; verify `sbatch --wrap true` by bsite
#                            over SSH; write site.json / site.env. Idempotent (a second start
#                            is < 2 s). --batch-only: the batch site alone, no PostgreSQL and no
#                            browser packages (docker/: PostgreSQL is a container of its own)
#                            Switching accounting mode rewrites /etc/slurm/slurm.conf and
#                            restarts slurmctld + slurmd (and stops slurmdbd/mariadb for
#                            --no-accounting).
#   stop                     stop everything started here (condor_master, postgres, slurmd,
#                            slurmctld, slurmdbd, mariadbd, munged, sshd) by recorded PID, after
#                            cancelling unfinished Slurm jobs; removes site.json / site.env.
#   status                   which daemons are alive (by PID), sinfo/squeue, condor_status
#   env                      print site.env (fails if the site is not started)
#   start-condor             HTCondor personal pool run by bsite (installs HTCondor if needed, as
#                            install-condor), verifies condor_submit over SSH; adds CONDOR_* to
#                            site-env.sh. Changed policy settings (below) -> condor_reconfig of a
#                            running pool
#   install-condor           only make $BATCHSITE_CONDOR_PREFIX/sbin/condor_master exist, from the
#                            first of: (1) the tarball BATCHSITE_CONDOR_TARBALL, or by default the
#                            project's build in <repo>/../shared/htcondor/ when that is present;
#                            (2) an HTCondor already installed: condor_master on PATH (its release
#                            dir is linked as the prefix); (3) the official HTCondor release
#                            tarball (CONDOR_RELEASE_URL below), checked against its sha256 before
#                            it is unpacked. Starts nothing.
#   stop-condor              stop the pool (condor_master PID)
#   restart-sshd | stop-sshd | start-sshd | stop-slurmctld | start-slurmctld
#                            fault injection for tests
#   drop-traffic | restore-traffic
#                            silently DROP every packet to and from the sshd port on loopback
#                            (nftables table `batchsite_fault`; established connections hang,
#                            new ones time out) / remove that rule again
#   kill-schedd              SIGKILL the pool's condor_schedd (condor_master restarts it)
#
# Environment:
#   BATCHSITE_SITE_DIR      state dir            [<repo>/.state/site]
#   BATCHSITE_SSH_PORT      sshd port            [2222]
#   BATCHSITE_SSH_LISTEN    sshd address         [127.0.0.1; docker/: 0.0.0.0, for the other containers]
#   BATCHSITE_DB_PORT       MariaDB TCP port on 127.0.0.1 (slurmdbd uses TCP) [3307]
#   BATCHSITE_PG_PORT       PostgreSQL TCP port on 127.0.0.1 (Airflow metadata DB, campaign
#                           ledger; not 5432, so a system cluster can coexist) [5433]
#   BATCHSITE_CONDOR_TARBALL  a relocatable HTCondor tarball (top folder with sbin/condor_master);
#                             set: it must exist. Unset: <repo>/../shared/htcondor/
#                             condor-25.13.2-x86_64-debian12.tar.zst if present, else the fallbacks
#   BATCHSITE_CONDOR_PREFIX   [/opt/condor]; nothing is installed when sbin/condor_master exists there
#   BATCHSITE_CONDOR_RELEASE_URL, BATCHSITE_CONDOR_RELEASE_SHA256
#                             the official release tarball of fallback (3) and its sha256
#                             [CONDOR_RELEASE_URL, CONDOR_RELEASE_SHA256 below]
#   BATCHSITE_CONDOR_HELD_REMOVE_AFTER  seconds a held job stays before removal [86400]
#   BATCHSITE_FLAVOUR_SCALE   lxplus +JobFlavour limits x this (number or fraction) [5/1200:
#                             espresso 20 min -> 5 s, microcentury 1 h -> 15 s; 1 = as lxplus]
#   BATCHSITE_SITE_START_TIMEOUT [90]  BATCHSITE_SITE_STOP_TIMEOUT [20] (then SIGKILL)
#   BATCHSITE_SLURM_CPUS      CPUs the test Slurm node advertises, over-committed [32]
#
# Choices: slurmctld and slurmdbd run as SlurmUser=slurm (they drop privileges themselves;
# their state/log dirs are owned by slurm), slurmd as root, munged as munge, mariadbd as
# mysql (own datadir in the state dir, TCP on 127.0.0.1:$BATCHSITE_DB_PORT because slurmdbd
# has no socket option), sshd as root (own config/host key), condor_master as bsite, postgres
# as postgres (own cluster in the state dir, TCP on 127.0.0.1:$BATCHSITE_PG_PORT; databases
# `airflow` and `batchsite_ledger`, each owned by a role of the same name with a generated
# password; their URIs are in site.json).
set -euo pipefail
umask 022
export LC_ALL=C

SCRIPT_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(cd "$SCRIPT_DIR/../.." && pwd)
STATE=$(realpath -m "${BATCHSITE_SITE_DIR:-$REPO/.state/site}")
SSH_PORT=${BATCHSITE_SSH_PORT:-2222}
SSH_LISTEN=${BATCHSITE_SSH_LISTEN:-127.0.0.1}
DB_PORT=${BATCHSITE_DB_PORT:-3307}
PG_PORT=${BATCHSITE_PG_PORT:-5433}
START_TIMEOUT=${BATCHSITE_SITE_START_TIMEOUT:-90}
# CPUs the test Slurm node advertises (SlurmdParameters=config_overrides: more than the machine
# has). A 2-CPU runner with CPUs=2 starts ~2 array tasks a second (one per freed CPU per
# scheduling pass); trivial test payloads are not CPU-bound, so 32 lets ~35 a second start and
# keeps rounds of many tests from queueing behind each other. Memory is advertised at 2 GB per
# CPU (DefMemPerCPU) or the real MemTotal - 1 GB, whichever is larger.
SLURM_CPUS=${BATCHSITE_SLURM_CPUS:-32}
STOP_TIMEOUT=${BATCHSITE_SITE_STOP_TIMEOUT:-20}

SITE_USER=bsite
SITE_HOME=/home/$SITE_USER
REMOTE_ROOT=$SITE_HOME/batchsite
ENV_SCRIPT=$SITE_HOME/site-env.sh
PROBE_DIR=$SITE_HOME/.site-probe
SITE_PYTHON=/usr/bin/python3

CLUSTER=batchsite
ACCOUNT=batchsite
PARTITION=debug
NODE=$(hostname -s)
SLURM_CONF=/etc/slurm/slurm.conf
SLURMDBD_CONF=/etc/slurm/slurmdbd.conf
SLURMCTLD_PORT=6817
SLURMD_PORT=6818
SLURMDBD_PORT=6819

CONDOR_PREFIX=${BATCHSITE_CONDOR_PREFIX:-/opt/condor}
CONDOR_SHARED_TARBALL=$(realpath -m "$REPO/../shared/htcondor/condor-25.13.2-x86_64-debian12.tar.zst")
# the official release tarball (research.cs.wisc.edu/htcondor/tarball/<series>/<version>/release/;
# the "stripped" build: binaries without debug symbols, its own libraries in lib/condor)
CONDOR_RELEASE_URL=${BATCHSITE_CONDOR_RELEASE_URL:-https://research.cs.wisc.edu/htcondor/tarball/25.x/25.13.2/release/condor-25.13.2-x86_64_Debian12-stripped.tar.gz}
# Not pinned yet: that server could not be reached from the machine this was written on, and a
# checksum that was never computed from the file must not be written down. The download refuses
# to run until BATCHSITE_CONDOR_RELEASE_SHA256 (or this constant) holds the real one.
CONDOR_RELEASE_SHA256=${BATCHSITE_CONDOR_RELEASE_SHA256:-}
CONDOR_DIR=$SITE_HOME/condor
CONDOR_CFG=$CONDOR_DIR/condor_config
CONDOR_HELD_REMOVE_AFTER=${BATCHSITE_CONDOR_HELD_REMOVE_AFTER:-86400}

SSH_DIR=$STATE/ssh
CLIENT_KEY=$SSH_DIR/id_ed25519
HOST_KEY=$SSH_DIR/ssh_host_ed25519_key
KNOWN_HOSTS=$SSH_DIR/known_hosts
SSHD_CONFIG=$SSH_DIR/sshd_config
SSHD_LOG=$STATE/log/sshd.log
PIDS=$STATE/pids
MUNGE_DIR=$STATE/munge
MYSQL_DIR=$STATE/mysql
MYSQL_SOCK=$MYSQL_DIR/mysqld.sock
SLURM_DIR=$STATE/slurm
PG_DIR=$STATE/postgres
PG_DATA=$PG_DIR/data
PG_SOCK_DIR=$PG_DIR/run
#: databases (each owned by the role of the same name): Airflow's metadata DB, the campaign ledger
PG_DATABASES=(airflow batchsite_ledger)
SITE_JSON=$STATE/site.json
SITE_ENV=$STATE/site.env
MODE_FILE=$STATE/mode

BASE_PACKAGES=(openssh-server openssh-client munge slurmctld slurmd slurm-client nftables rsync
               python3 python3-numpy zstd util-linux shellcheck)
ACCT_PACKAGES=(slurmdbd mariadb-server mariadb-client)
PG_PACKAGES=(postgresql)
# the web UI test (tests/deployment/test_ui.py): headless Chromium driven by Selenium
UI_PACKAGES=(chromium chromium-driver)

# ---------------------------------------------------------------- helpers
say() { printf 'site.sh: %s\n' "$*"; }
die() { printf 'site.sh: ERROR: %s\n' "$*" >&2; exit 1; }
# die_logs MESSAGE FILE... : the reason plus the tail of each daemon log that exists
die_logs() {
  local msg=$1 f; shift
  printf 'site.sh: ERROR: %s\n' "$msg" >&2
  for f in "$@"; do
    [ -s "$f" ] || continue
    printf -- '----- last lines of %s -----\n' "$f" >&2
    tail -n 25 "$f" >&2
  done
  exit 1
}

now_us() { echo "${EPOCHREALTIME/./}"; }
fmt_us() { printf '%d.%02d' $(( $1 / 1000000 )) $(( ($1 % 1000000) / 10000 )); }
T_START=$(now_us); T_LAST=$T_START; TIMES=()
mark() { local t; t=$(now_us); TIMES+=("$1=$(fmt_us $((t - T_LAST)))s"); T_LAST=$t; }
print_timings() { local t; t=$(now_us); say "timings: ${TIMES[*]} total=$(fmt_us $((t - T_START)))s"; }

# logs of each daemon (for failure messages)
daemon_logs() {
  case $1 in
    sshd) echo "$SSHD_LOG" ;;
    munged) echo "$MUNGE_DIR/munged.out" ;;
    mariadb) echo "$MYSQL_DIR/mariadb.err $MYSQL_DIR/mariadbd.out" ;;
    slurmdbd) echo "$SLURM_DIR/log/slurmdbd.log $SLURM_DIR/log/slurmdbd.out" ;;
    slurmctld) echo "$SLURM_DIR/log/slurmctld.log $SLURM_DIR/log/slurmctld.out" ;;
    slurmd) echo "$SLURM_DIR/log/slurmd.log $SLURM_DIR/log/slurmd.out" ;;
    postgres) echo "$PG_DIR/postgres.log $PG_DIR/initdb.log" ;;
    condor_master) echo "$CONDOR_DIR/log/master.stdout $CONDOR_DIR/log/MasterLog $CONDOR_DIR/log/SchedLog $CONDOR_DIR/log/StartLog $CONDOR_DIR/log/ShadowLog" ;;
  esac
}
die_daemon() { local d=$1; shift; local logs; logs=$(daemon_logs "$d"); # shellcheck disable=SC2086
  die_logs "$d: $*" $logs; }

# ---- processes: $PIDS/NAME.pid holds "PID COMM"; alive = exists, not a zombie, same comm
pid_running() {  # PID COMM
  local st
  st=$(awk '/^State:/ {print $2}' "/proc/$1/status" 2>/dev/null) || return 1
  [ -n "$st" ] && [ "$st" != Z ] || return 1
  [ "$(cat "/proc/$1/comm" 2>/dev/null)" = "$2" ]
}
alive() {
  local f=$PIDS/$1.pid pid comm
  [ -s "$f" ] || return 1
  read -r pid comm < "$f" || return 1
  pid_running "$pid" "$comm"
}
pid_of() { local pid comm; read -r pid comm < "$PIDS/$1.pid"; echo "$pid"; }

# launch NAME COMM OUTFILE CMD... : start CMD in its own session, record its PID, wait until it
# has exec'd COMM (fd 9 = the state lock is not inherited)
launch() {
  local name=$1 comm=$2 out=$3; shift 3
  # a site that is being (re)started is not described by site.json until verified again
  [ -z "$CLEAR_SITE_FILES_ON_LAUNCH" ] || [ -n "$LAUNCHED" ] || rm -f "$SITE_JSON" "$SITE_ENV"
  setsid "$@" </dev/null >>"$out" 2>&1 9>&- &
  local pid=$!
  LAUNCHED=1
  echo "$pid $comm" > "$PIDS/$name.pid"
  for _ in $(seq 1 100); do
    pid_running "$pid" "$comm" && return 0
    [ -e "/proc/$pid" ] && [ "$(awk '/^State:/ {print $2}' "/proc/$pid/status" 2>/dev/null)" != Z ] \
      || die_daemon "$name" "exited right after start (pid $pid)"
    sleep 0.02
  done
  die_daemon "$name" "pid $pid did not become '$comm' (now '$(cat /proc/$pid/comm 2>/dev/null)')"
}

stop_daemon() {  # NAME
  local name=$1 f=$PIDS/$1.pid pid comm t0 deadline sessions=
  if ! alive "$name"; then rm -f "$f"; say "$name: not running"; return 0; fi
  read -r pid comm < "$f"
  t0=$(now_us)
  # sshd: the per-connection processes (children of the listener) outlive it; end them too,
  # so that established sessions (e.g. OpenSSH ControlMaster connections) are gone as well
  [ "$name" = sshd ] && sessions=$(pgrep -P "$pid" 2>/dev/null | tr '\n' ' ' || true)
  # postgres: SIGTERM is a "smart" shutdown that waits for every client (a running Airflow) to
  # disconnect; SIGINT is the "fast" one: clients are disconnected, a clean checkpoint is written
  local sig=TERM
  [ "$name" = postgres ] && sig=INT
  kill -"$sig" "$pid" 2>/dev/null || true
  [ -z "$sessions" ] || stop_sessions $sessions
  deadline=$((EPOCHSECONDS + STOP_TIMEOUT))
  while pid_running "$pid" "$comm"; do
    if [ "$EPOCHSECONDS" -ge "$deadline" ]; then
      say "$name: still alive after ${STOP_TIMEOUT}s, SIGKILL $pid"
      kill -KILL "$pid" 2>/dev/null || true
      deadline=$((EPOCHSECONDS + 10))
      while pid_running "$pid" "$comm"; do
        [ "$EPOCHSECONDS" -lt "$deadline" ] || die_daemon "$name" "pid $pid survives SIGKILL"
        sleep 0.1
      done
      break
    fi
    sleep 0.05
  done
  rm -f "$f"
  say "$name: stopped pid $pid ($(fmt_us $(( $(now_us) - t0 )))s)"
}

stop_sessions() {  # PID... (sshd per-connection processes; comm sshd)
  local p deadline=$((EPOCHSECONDS + 5)) left
  # shellcheck disable=SC2086
  kill -TERM "$@" 2>/dev/null || true
  while :; do
    left=
    for p in "$@"; do pid_running "$p" sshd && left="$left $p"; done
    [ -n "$left" ] || break
    if [ "$EPOCHSECONDS" -ge "$deadline" ]; then kill -KILL $left 2>/dev/null || true; break; fi
    sleep 0.05
  done
  say "sshd: ended $# established SSH session(s)"
}

# wait_for DAEMON WHAT CMD... : poll CMD until it succeeds; die with DAEMON's logs (and CMD's
# last error) when the daemon dies, CMD sets WAIT_FATAL, or START_TIMEOUT passes
WAIT_FATAL=
LAUNCHED=   # set when this run started any daemon (then the full probe runs)
CLEAR_SITE_FILES_ON_LAUNCH=
wait_for() {
  local d=$1 what=$2; shift 2
  local deadline=$((EPOCHSECONDS + START_TIMEOUT)) errf=$STATE/run/wait.err
  until "$@" >/dev/null 2>"$errf"; do
    alive "$d" || die_daemon "$d" "exited while waiting for $what (last check error: $(tail -n 3 "$errf" | tr '\n' ' '))"
    [ -z "$WAIT_FATAL" ] || die_daemon "$d" "$WAIT_FATAL"
    [ "$EPOCHSECONDS" -lt "$deadline" ] ||
      die_daemon "$d" "timeout (${START_TIMEOUT}s) waiting for $what (last check error: $(tail -n 3 "$errf" | tr '\n' ' '))"
    sleep 0.1
  done
}

# write_if_changed FILE [MODE] : stdin -> FILE (atomically, mode 644 unless given) when
# different; returns 0 if written, 1 if FILE already had that content
write_if_changed() {
  local f=$1 mode=${2:-644} tmp
  tmp=$(mktemp "$f.XXXXXX")
  cat > "$tmp"
  if [ -f "$f" ] && cmp -s "$tmp" "$f"; then rm -f "$tmp"; return 1; fi
  chmod "$mode" "$tmp"; mv -f "$tmp" "$f"; return 0
}

ssh_site() {
  ssh -F /dev/null -i "$CLIENT_KEY" -o IdentitiesOnly=yes -o UserKnownHostsFile="$KNOWN_HOSTS" \
    -o GlobalKnownHostsFile=/dev/null -o StrictHostKeyChecking=yes -o BatchMode=yes \
    -o ConnectTimeout=10 -o LogLevel=ERROR -p "$SSH_PORT" "$SITE_USER@127.0.0.1" "$@" 9>&-
}
# run a command locally as the site user (condor clients need the pool's user: FS auth)
as_site_user() {
  setpriv --reuid="$SITE_USER" --regid="$SITE_USER" --init-groups \
    env -i HOME="$SITE_HOME" USER="$SITE_USER" LOGNAME="$SITE_USER" LANG=C.UTF-8 \
    PATH="$CONDOR_PREFIX/bin:$CONDOR_PREFIX/sbin:/usr/bin:/bin" CONDOR_CONFIG="$CONDOR_CFG" "$@" 9>&-
}

# ---------------------------------------------------------------- preparation
check_root() { [ "$(id -u)" -eq 0 ] || die "must run as root (it starts system daemons)"; }

lock_state() {
  install -d -m 755 "$STATE" "$PIDS" "$STATE/log" "$STATE/run"
  chmod 755 "$STATE"
  exec 9>"$STATE/.lock"
  flock -w 600 9 || die "could not lock $STATE/.lock within 600 s (another site.sh running?)"
}

ensure_packages() {  # PACKAGE...
  local out missing=() p
  out=$(dpkg-query -W -f='${Package} ${db:Status-Status}\n' "$@" 2>/dev/null || true)
  for p in "$@"; do
    grep -qx "$p installed" <<<"$out" || missing+=("$p")
  done
  [ ${#missing[@]} -eq 0 ] && return 0
  say "installing missing packages: ${missing[*]}"
  # keep package scripts from starting the system's own daemons (they would take our ports
  # and /run/munge); removed again on exit
  if [ ! -e /usr/sbin/policy-rc.d ]; then
    printf '#!/bin/sh\n# temporary, tests/site/site.sh\nexit 101\n' > /usr/sbin/policy-rc.d
    chmod 755 /usr/sbin/policy-rc.d; POLICY_RC_ADDED=1
    trap 'rm -f /usr/sbin/policy-rc.d' EXIT
  fi
  local log=$STATE/log/apt.log rc=0 t0
  t0=$(now_us)
  { DEBIAN_FRONTEND=noninteractive apt-get update -q &&
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q "${missing[@]}"; } >"$log" 2>&1 9>&- || rc=$?
  if [ -n "${POLICY_RC_ADDED:-}" ]; then rm -f /usr/sbin/policy-rc.d; trap - EXIT; fi
  [ "$rc" -eq 0 ] || die_logs "apt-get install ${missing[*]} failed (exit $rc)" "$log"
  say "installed ${missing[*]} in $(fmt_us $(( $(now_us) - t0 )))s"
}

check_traversable() {  # USER PATH
  setpriv --reuid="$1" --regid="$1" --clear-groups test -x "$2" 9>&- ||
    die "user $1 cannot traverse $2 (state dir must be reachable by the daemon users; set BATCHSITE_SITE_DIR)"
}

ensure_user() {
  if ! getent passwd "$SITE_USER" >/dev/null; then
    useradd -m -d "$SITE_HOME" -s /bin/bash -U "$SITE_USER" || die "useradd $SITE_USER failed"
  fi
  local home shell
  home=$(getent passwd "$SITE_USER" | cut -d: -f6)
  shell=$(getent passwd "$SITE_USER" | cut -d: -f7)
  [ "$home" = "$SITE_HOME" ] || die "user $SITE_USER exists with home $home, expected $SITE_HOME"
  [ "$shell" = /bin/bash ] || usermod -s /bin/bash "$SITE_USER"
  # sshd with UsePAM no refuses key logins to locked ('!') accounts: unusable but unlocked
  [ "$(getent shadow "$SITE_USER" | cut -d: -f2)" = '*' ] || usermod -p '*' "$SITE_USER"
  install -d -o "$SITE_USER" -g "$SITE_USER" "$SITE_HOME"
  chmod go-w "$SITE_HOME"
  install -d -o "$SITE_USER" -g "$SITE_USER" -m 755 "$REMOTE_ROOT"
  install -d -o "$SITE_USER" -g "$SITE_USER" -m 700 "$SITE_HOME/.ssh"
}

ensure_keys() {
  install -d -m 755 "$SSH_DIR"
  [ -s "$CLIENT_KEY" ] && [ -s "$CLIENT_KEY.pub" ] ||
    { rm -f "$CLIENT_KEY" "$CLIENT_KEY.pub"; ssh-keygen -q -t ed25519 -N '' -C "batchsite-test-client" -f "$CLIENT_KEY"; }
  [ -s "$HOST_KEY" ] && [ -s "$HOST_KEY.pub" ] ||
    { rm -f "$HOST_KEY" "$HOST_KEY.pub"; ssh-keygen -q -t ed25519 -N '' -C "batchsite-site-host" -f "$HOST_KEY"; }
  chown root:root "$CLIENT_KEY" "$HOST_KEY"; chmod 600 "$CLIENT_KEY" "$HOST_KEY"
  # add our key (keep other lines: another state dir may use the same test user)
  local ak=$SITE_HOME/.ssh/authorized_keys
  touch "$ak"
  grep -qxF "$(cat "$CLIENT_KEY.pub")" "$ak" || cat "$CLIENT_KEY.pub" >> "$ak"
  chown "$SITE_USER:$SITE_USER" "$ak"; chmod 600 "$ak"
}

host_key_line() { cut -d' ' -f1,2 "$HOST_KEY.pub"; }

write_site_env_script() {
  {
    echo "# Environment of the batchsite test site (written by tests/site/site.sh)."
    echo "export PATH=\"/usr/bin:/bin:/usr/local/bin:/usr/sbin:/sbin\${PATH:+:\$PATH}\""
    echo "export BATCHSITE_PYTHON=$SITE_PYTHON"
    if [ -f "$CONDOR_CFG" ]; then
      echo "# HTCondor personal pool (tests/site/site.sh start-condor)"
      echo "export CONDOR_CONFIG=$CONDOR_CFG"
      echo "export PATH=\"$CONDOR_PREFIX/bin:$CONDOR_PREFIX/sbin:\$PATH\""
    fi
  } | write_if_changed "$ENV_SCRIPT" || true
  chown "$SITE_USER:$SITE_USER" "$ENV_SCRIPT"; chmod 644 "$ENV_SCRIPT"
}

json_str() { local s=${1//\\/\\\\}; s=${s//\"/\\\"}; printf '"%s"' "$s"; }
shq() { printf "'%s'" "${1//\'/\'\\\'\'}"; }

write_site_files() {
  local slurm=false accounting=false condor=false hk
  if alive slurmctld && alive slurmd; then
    slurm=true
    if [ "$(cat "$MODE_FILE" 2>/dev/null)" = accounting ] && alive slurmdbd && alive mariadb; then accounting=true; fi
  fi
  alive condor_master && condor=true
  local pg=null pg_env=
  if alive postgres; then
    pg="{\"host\": \"127.0.0.1\", \"port\": $PG_PORT, \"airflow_uri\": $(json_str "$(pg_uri airflow)"), \"ledger_uri\": $(json_str "$(pg_uri batchsite_ledger)")}"
    pg_env="export BATCHSITE_SITE_PG_AIRFLOW_URI=$(shq "$(pg_uri airflow)")
export BATCHSITE_SITE_PG_LEDGER_URI=$(shq "$(pg_uri batchsite_ledger)")"
  fi
  hk=$(host_key_line)
  {
    echo "{"
    echo "  \"host\": \"127.0.0.1\","
    echo "  \"port\": $SSH_PORT,"
    echo "  \"user\": $(json_str "$SITE_USER"),"
    echo "  \"key_file\": $(json_str "$CLIENT_KEY"),"
    echo "  \"known_hosts\": $(json_str "$KNOWN_HOSTS"),"
    echo "  \"host_key\": $(json_str "$hk"),"
    echo "  \"remote_root\": $(json_str "$REMOTE_ROOT"),"
    echo "  \"env_script\": $(json_str "$ENV_SCRIPT"),"
    echo "  \"accounting\": $accounting,"
    echo "  \"condor\": $condor,"
    echo "  \"postgres\": $pg,"
    echo "  \"slurm\": $slurm"
    echo "}"
  } | write_if_changed "$SITE_JSON" || true
  {
    echo "export BATCHSITE_SITE_HOST=127.0.0.1"
    echo "export BATCHSITE_SITE_PORT=$SSH_PORT"
    echo "export BATCHSITE_SITE_USER=$(shq "$SITE_USER")"
    echo "export BATCHSITE_SITE_KEY_FILE=$(shq "$CLIENT_KEY")"
    echo "export BATCHSITE_SITE_KNOWN_HOSTS=$(shq "$KNOWN_HOSTS")"
    echo "export BATCHSITE_SITE_HOST_KEY=$(shq "$hk")"
    echo "export BATCHSITE_SITE_REMOTE_ROOT=$(shq "$REMOTE_ROOT")"
    echo "export BATCHSITE_SITE_ENV_SCRIPT=$(shq "$ENV_SCRIPT")"
    echo "export BATCHSITE_SITE_ACCOUNTING=$accounting"
    echo "export BATCHSITE_SITE_CONDOR=$condor"
    echo "export BATCHSITE_SITE_SLURM=$slurm"
    [ -z "$pg_env" ] || echo "$pg_env"
  } | write_if_changed "$SITE_ENV" || true
}

# ---------------------------------------------------------------- sshd
sshd_config_content() {
  cat <<EOF
# batchsite test site sshd (written by tests/site/site.sh)
ListenAddress $SSH_LISTEN
Port $SSH_PORT
AddressFamily inet
HostKey $HOST_KEY
PidFile $STATE/run/sshd.pid
AllowUsers $SITE_USER
PermitRootLogin no
PubkeyAuthentication yes
AuthorizedKeysFile .ssh/authorized_keys
PasswordAuthentication no
KbdInteractiveAuthentication no
UsePAM no
StrictModes yes
MaxStartups 50:30:100
ClientAliveInterval 0
UseDNS no
PrintMotd no
X11Forwarding no
AcceptEnv LANG LC_*
Subsystem sftp /usr/lib/openssh/sftp-server
EOF
}

keyscan_ok() {  # writes known_hosts when the daemon on the port presents our host key
  local line want
  line=$(ssh-keyscan -T 2 -p "$SSH_PORT" -t ed25519 127.0.0.1 2>/dev/null 9>&- | grep -v '^#' | head -1) || return 1
  [ -n "$line" ] || return 1
  want=$(host_key_line)
  if [ "$(cut -d' ' -f2,3 <<<"$line")" != "$want" ]; then
    WAIT_FATAL="port $SSH_PORT presents host key '$(cut -d' ' -f2,3 <<<"$line")', not ours ($want): another sshd owns the port?"
    return 1
  fi
  printf '%s\n' "$line" | write_if_changed "$KNOWN_HOSTS" || true
}

known_hosts_ok() {
  [ -s "$KNOWN_HOSTS" ] && grep -qxF "[127.0.0.1]:$SSH_PORT $(host_key_line)" "$KNOWN_HOSTS"
}

start_sshd() {
  [ -x /usr/sbin/sshd ] || die "/usr/sbin/sshd missing (package openssh-server)"
  install -d -m 755 /run/sshd
  local err
  err=$(/usr/sbin/sshd -t -f "$SSHD_CONFIG" 2>&1) || die "sshd config $SSHD_CONFIG rejected: $err"
  : > "$SSHD_LOG"
  launch sshd sshd "$SSHD_LOG" /usr/sbin/sshd -D -f "$SSHD_CONFIG" -E "$SSHD_LOG"
  wait_for sshd "ssh-keyscan of 127.0.0.1:$SSH_PORT" keyscan_ok
  say "sshd: pid $(pid_of sshd) on 127.0.0.1:$SSH_PORT"
}

ensure_sshd() {
  local changed=
  sshd_config_content | write_if_changed "$SSHD_CONFIG" && changed=1
  if alive sshd && [ -n "$changed" ]; then say "sshd config changed: restarting sshd"; stop_daemon sshd; fi
  alive sshd || start_sshd
  known_hosts_ok || wait_for sshd "ssh-keyscan of 127.0.0.1:$SSH_PORT" keyscan_ok
}

check_ssh_login() {
  local out
  out=$(ssh_site 'echo "$(id -un):$HOME"' 2>&1) ||
    die_logs "ssh $SITE_USER@127.0.0.1:$SSH_PORT failed: $out" "$SSHD_LOG"
  [ "$out" = "$SITE_USER:$SITE_HOME" ] || die "ssh login check printed '$out', expected '$SITE_USER:$SITE_HOME'"
}

# ---------------------------------------------------------------- munge
munge_ok() { munge -n -S /run/munge/munge.socket.2 9>&- | unmunge -S /run/munge/munge.socket.2 9>&- >/dev/null; }

ensure_munged() {
  alive munged && return 0
  if [ ! -s /etc/munge/munge.key ]; then
    mungekey --create --keyfile=/etc/munge/munge.key || die "mungekey --create failed"
  fi
  chown munge:munge /etc/munge/munge.key; chmod 600 /etc/munge/munge.key
  install -d -o munge -g munge -m 755 /run/munge
  install -d -o munge -g munge -m 700 "$MUNGE_DIR"
  check_traversable munge "$MUNGE_DIR"
  launch munged munged "$MUNGE_DIR/munged.out" setpriv --reuid=munge --regid=munge --init-groups \
    /usr/sbin/munged -F --socket=/run/munge/munge.socket.2 --pid-file="$MUNGE_DIR/munged.pid" \
    --seed-file="$MUNGE_DIR/munged.seed"
  wait_for munged "a munge credential round trip" munge_ok
  say "munged: pid $(pid_of munged)"
}

# ---------------------------------------------------------------- mariadb + slurmdbd
# shellcheck disable=SC2120  # arguments come through wait_for
mysql_root() { mariadb --no-defaults -S "$MYSQL_SOCK" -u root "$@" 9>&-; }
db_password() {
  local f=$STATE/run/dbpass
  if [ ! -s "$f" ]; then (umask 077; head -c 18 /dev/urandom | base64 | tr -d '/+=' > "$f"); fi
  chmod 600 "$f"; cat "$f"
}

ensure_mariadb() {
  alive mariadb && return 0
  [ ${#MYSQL_SOCK} -lt 100 ] || die "MariaDB socket path too long (${#MYSQL_SOCK} chars): $MYSQL_SOCK; use a shorter BATCHSITE_SITE_DIR"
  install -d -o mysql -g mysql -m 750 "$MYSQL_DIR"
  check_traversable mysql "$MYSQL_DIR"
  if [ ! -d "$MYSQL_DIR/data/mysql" ]; then
    rm -rf "$MYSQL_DIR/data"
    mariadb-install-db --no-defaults --user=mysql --datadir="$MYSQL_DIR/data" \
      --auth-root-authentication-method=socket --skip-test-db >"$STATE/log/mariadb-install.log" 2>&1 9>&- ||
      die_logs "mariadb-install-db failed" "$STATE/log/mariadb-install.log"
  fi
  rm -f "$MYSQL_SOCK"
  launch mariadb mariadbd "$MYSQL_DIR/mariadbd.out" /usr/sbin/mariadbd --no-defaults --user=mysql \
    --datadir="$MYSQL_DIR/data" --socket="$MYSQL_SOCK" --pid-file="$MYSQL_DIR/mariadbd.pid" \
    --log-error="$MYSQL_DIR/mariadb.err" --port="$DB_PORT" --bind-address=127.0.0.1 \
    --skip-name-resolve --innodb-buffer-pool-size=512M --innodb-lock-wait-timeout=900 \
    --innodb-flush-log-at-trx-commit=0 \
    --innodb-doublewrite=0
  wait_for mariadb "a MariaDB connection on $MYSQL_SOCK" mysql_root -e 'SELECT 1'
  local pw; pw=$(db_password)
  mysql_root <<EOF || die_daemon mariadb "creating slurm_acct_db / user slurm failed"
CREATE DATABASE IF NOT EXISTS slurm_acct_db;
CREATE USER IF NOT EXISTS 'slurm'@'127.0.0.1' IDENTIFIED BY '$pw';
ALTER USER 'slurm'@'127.0.0.1' IDENTIFIED BY '$pw';
GRANT ALL ON slurm_acct_db.* TO 'slurm'@'127.0.0.1';
EOF
  say "mariadb: pid $(pid_of mariadb) on 127.0.0.1:$DB_PORT"
}

slurmdbd_conf_content() {
  cat <<EOF
# batchsite test site slurmdbd (written by tests/site/site.sh)
AuthType=auth/munge
DbdHost=$NODE
DbdAddr=127.0.0.1
DbdPort=$SLURMDBD_PORT
SlurmUser=slurm
DebugLevel=info
LogFile=$SLURM_DIR/log/slurmdbd.log
PidFile=$SLURM_DIR/run/slurmdbd.pid
StorageType=accounting_storage/mysql
StorageHost=127.0.0.1
StoragePort=$DB_PORT
StorageUser=slurm
StoragePass=$(db_password)
StorageLoc=slurm_acct_db
EOF
}

sacctmgr_q() { timeout 20 sacctmgr -n -P "$@" 9>&-; }

ensure_slurmdbd() {
  local changed=
  slurmdbd_conf_content | write_if_changed "$SLURMDBD_CONF" 600 && changed=1
  chown slurm:slurm "$SLURMDBD_CONF"; chmod 600 "$SLURMDBD_CONF"
  if alive slurmdbd && [ -n "$changed" ]; then say "slurmdbd.conf changed: restarting slurmdbd"; stop_daemon slurmdbd; fi
  alive slurmdbd && return 0
  launch slurmdbd slurmdbd "$SLURM_DIR/log/slurmdbd.out" /usr/sbin/slurmdbd -D
  wait_for slurmdbd "slurmdbd to answer sacctmgr" sacctmgr_q list cluster format=cluster
  say "slurmdbd: pid $(pid_of slurmdbd)"
  local out
  out=$(sacctmgr_q list cluster format=cluster 2>&1) || die_daemon slurmdbd "sacctmgr list cluster failed: $out"
  if ! grep -qx "$CLUSTER" <<<"$out"; then
    out=$(timeout 20 sacctmgr -i add cluster "$CLUSTER" 2>&1 9>&-) || die_daemon slurmdbd "sacctmgr add cluster failed: $out"
  fi
  out=$(sacctmgr_q list account format=account 2>&1) || die_daemon slurmdbd "sacctmgr list account failed: $out"
  if ! grep -qx "$ACCOUNT" <<<"$out"; then
    out=$(timeout 20 sacctmgr -i add account "$ACCOUNT" Cluster="$CLUSTER" Description="batchsite tests" Organization=batchsite 2>&1 9>&-) ||
      die_daemon slurmdbd "sacctmgr add account failed: $out"
  fi
  out=$(sacctmgr_q list assoc cluster="$CLUSTER" user="$SITE_USER" format=user 2>&1) || die_daemon slurmdbd "sacctmgr list assoc failed: $out"
  if ! grep -qx "$SITE_USER" <<<"$out"; then
    out=$(timeout 20 sacctmgr -i add user "$SITE_USER" Account="$ACCOUNT" Cluster="$CLUSTER" 2>&1 9>&-) ||
      die_daemon slurmdbd "sacctmgr add user failed: $out"
  fi
}

# ---------------------------------------------------------------- postgres (Airflow metadata DB, ledger)
PG_BIN=
pg_bin() {  # the newest installed server's bin dir (Debian: /usr/lib/postgresql/<major>/bin)
  local d
  d=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1)
  [ -n "$d" ] && [ -x "$d/postgres" ] || die "no PostgreSQL server under /usr/lib/postgresql (package postgresql)"
  echo "$d"
}
as_postgres() { setpriv --reuid=postgres --regid=postgres --init-groups "$@" 9>&-; }
# superuser psql (SQL on stdin) over the cluster's own socket (peer authentication as postgres)
pg_psql() { as_postgres "$PG_BIN/psql" -X -q -h "$PG_SOCK_DIR" -p "$PG_PORT" -U postgres -d postgres -v ON_ERROR_STOP=1; }
pg_ready() { "$PG_BIN/pg_isready" -q -h 127.0.0.1 -p "$PG_PORT" -d postgres 9>&-; }
pg_password() {  # ROLE : generated once per state dir, like the MariaDB one
  local f=$STATE/run/pg_$1.pass
  if [ ! -s "$f" ]; then (umask 077; head -c 18 /dev/urandom | base64 | tr -d '/+=' > "$f"); fi
  chmod 600 "$f"; cat "$f"
}
pg_uri() { echo "postgresql://$1:$(pg_password "$1")@127.0.0.1:$PG_PORT/$1"; }  # DB (= its role)

# roles + databases; idempotent (a role's password is set again from its file every start).
# CREATEDB: a test session makes its own throwaway database (tests/deployment), so that two
# sessions never share one Airflow metadata DB
ensure_pg_databases() {
  local db pw sql="" out
  for db in "${PG_DATABASES[@]}"; do
    pw=$(pg_password "$db")
    sql+="SELECT format('CREATE ROLE %I LOGIN', '$db') WHERE NOT EXISTS (SELECT FROM pg_roles WHERE rolname = '$db')\\gexec
ALTER ROLE \"$db\" LOGIN CREATEDB PASSWORD '$pw';
SELECT format('CREATE DATABASE %I OWNER %I ENCODING ''UTF8'' TEMPLATE template0', '$db', '$db') WHERE NOT EXISTS (SELECT FROM pg_database WHERE datname = '$db')\\gexec
"
  done
  out=$(pg_psql <<<"$sql" 2>&1) || die_daemon postgres "creating the roles/databases ${PG_DATABASES[*]} failed: $out"
}

ensure_postgres() {
  PG_BIN=$(pg_bin)
  if ! alive postgres; then
    [ ${#PG_SOCK_DIR} -lt 90 ] || die "PostgreSQL socket dir too long (${#PG_SOCK_DIR} chars): $PG_SOCK_DIR; use a shorter BATCHSITE_SITE_DIR"
    install -d -o postgres -g postgres -m 700 "$PG_DIR" "$PG_SOCK_DIR"
    check_traversable postgres "$PG_DIR"
    local major; major=$(basename "$(dirname "$PG_BIN")")
    if [ -s "$PG_DATA/PG_VERSION" ] && [ "$(cat "$PG_DATA/PG_VERSION")" != "$major" ]; then
      die "$PG_DATA was made by PostgreSQL $(cat "$PG_DATA/PG_VERSION"), the server is $major: remove $PG_DATA (test data only)"
    fi
    if [ ! -s "$PG_DATA/PG_VERSION" ]; then
      rm -rf "$PG_DATA"
      as_postgres "$PG_BIN/initdb" -D "$PG_DATA" -U postgres -E UTF8 --locale=C --auth-local=peer \
        --auth-host=scram-sha-256 >"$PG_DIR/initdb.log" 2>&1 || die_logs "initdb of $PG_DATA failed" "$PG_DIR/initdb.log"
    fi
    # test cluster: no fsync (like MariaDB's flush-at-commit=0 above), room for a whole Airflow
    # deployment's connection pools (api-server, scheduler + executor workers, dag-processor,
    # triggerer, task processes)
    launch postgres postgres "$PG_DIR/postgres.log" setpriv --reuid=postgres --regid=postgres --init-groups \
      "$PG_BIN/postgres" -D "$PG_DATA" -c listen_addresses=127.0.0.1 -c port="$PG_PORT" \
      -c unix_socket_directories="$PG_SOCK_DIR" -c max_connections=300 -c fsync=off \
      -c synchronous_commit=off -c full_page_writes=off -c log_min_messages=warning
    wait_for postgres "pg_isready on 127.0.0.1:$PG_PORT" pg_ready
    say "postgres: pid $(pid_of postgres) on 127.0.0.1:$PG_PORT ($PG_BIN)"
  fi
  ensure_pg_databases
}

# ---------------------------------------------------------------- slurmctld + slurmd
slurm_conf_content() {  # accounting|none
  local mem
  [[ $SLURM_CPUS =~ ^[1-9][0-9]{0,3}$ ]] || die "BATCHSITE_SLURM_CPUS='$SLURM_CPUS': expected a whole number of CPUs, 1-9999"
  mem=$(awk -v c="$SLURM_CPUS" '/^MemTotal:/ {m = int($2 / 1024 - 1024); if (m < c * 2048) m = c * 2048; print m}' /proc/meminfo)
  cat <<EOF
# batchsite test site: single-node Slurm (written by tests/site/site.sh; mode $1)
ClusterName=$CLUSTER
SlurmctldHost=$NODE(127.0.0.1)
SlurmUser=slurm
SlurmdUser=root
SlurmctldPort=$SLURMCTLD_PORT
SlurmdPort=$SLURMD_PORT
AuthType=auth/munge
StateSaveLocation=$SLURM_DIR/state
SlurmdSpoolDir=$SLURM_DIR/spool
SlurmctldPidFile=$SLURM_DIR/run/slurmctld.pid
SlurmdPidFile=$SLURM_DIR/run/slurmd.pid
SlurmctldLogFile=$SLURM_DIR/log/slurmctld.log
SlurmdLogFile=$SLURM_DIR/log/slurmd.log
SlurmctldDebug=info
SlurmdDebug=info
MailProg=/bin/true
MpiDefault=none
SwitchType=switch/none
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/linux
JobAcctGatherFrequency=task=1
JobAcctGatherParams=OverMemoryKill
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
DefMemPerCPU=2048
SchedulerType=sched/backfill
SchedulerParameters=batch_sched_delay=0
SlurmdParameters=config_overrides
# finished jobs stay a day (MinJobAge) for the tests to inspect; every array task counts, so the
# default MaxJobCount (10,000) would be full after one 10,000-unit round
MaxJobCount=500000
MinJobAge=86400
ReturnToService=2
JobCompType=jobcomp/none
EOF
  if [ "$1" = accounting ]; then
    echo "AccountingStorageType=accounting_storage/slurmdbd"
    echo "AccountingStorageHost=127.0.0.1"
    echo "AccountingStoragePort=$SLURMDBD_PORT"
  else
    echo "AccountingStorageType=accounting_storage/none"
  fi
  cat <<EOF
NodeName=$NODE NodeAddr=127.0.0.1 CPUs=$SLURM_CPUS Sockets=1 CoresPerSocket=$SLURM_CPUS ThreadsPerCore=1 RealMemory=$mem State=UNKNOWN
PartitionName=$PARTITION Nodes=$NODE Default=YES MaxTime=INFINITE State=UP
EOF
}

prepare_slurm_dirs() {
  install -d -o slurm -g slurm -m 755 "$SLURM_DIR" "$SLURM_DIR/state" "$SLURM_DIR/log" "$SLURM_DIR/run"
  install -d -m 755 "$SLURM_DIR/spool"
  check_traversable slurm "$SLURM_DIR/state"
}

start_slurmctld() {
  [ -f "$SLURM_CONF" ] || die "$SLURM_CONF missing: run 'site.sh start' first"
  alive munged || die "munged is not running: run 'site.sh start' first"
  prepare_slurm_dirs
  launch slurmctld slurmctld "$SLURM_DIR/log/slurmctld.out" /usr/sbin/slurmctld -D
  wait_for slurmctld "scontrol ping" scontrol ping
  say "slurmctld: pid $(pid_of slurmctld)"
}

node_state() { sinfo -h -n "$NODE" -o '%T' 9>&- 2>/dev/null | head -1; }

wait_node_idle() {
  local deadline=$((EPOCHSECONDS + START_TIMEOUT)) st last_resume=0
  while :; do
    alive slurmctld || die_daemon slurmctld "exited while waiting for node $NODE to become idle"
    alive slurmd || die_daemon slurmd "exited while waiting for node $NODE to become idle"
    st=$(node_state)
    case $st in
      idle|mixed|allocated|completing) return 0 ;;
      *drain*|down*|*fail*)
        if [ $((EPOCHSECONDS - last_resume)) -ge 2 ]; then
          say "node $NODE is '$st': scontrol update state=resume"
          scontrol update nodename="$NODE" state=resume 9>&- 2>/dev/null || true
          last_resume=$EPOCHSECONDS
        fi ;;
    esac
    if [ "$EPOCHSECONDS" -ge "$deadline" ]; then
      local info; info=$(scontrol show node "$NODE" 9>&- 2>&1 | grep -E 'State=|Reason=' || true)
      # shellcheck disable=SC2046
      die_logs "node $NODE not idle after ${START_TIMEOUT}s (state '$st'; $info)" $(daemon_logs slurmctld) $(daemon_logs slurmd)
    fi
    sleep 0.1
  done
}

start_slurmd() {
  prepare_slurm_dirs
  launch slurmd slurmd "$SLURM_DIR/log/slurmd.out" /usr/sbin/slurmd -D -N "$NODE"
  say "slurmd: pid $(pid_of slurmd)"
}

# warm start: one SSH round trip that logs in as bsite and submits `sbatch --wrap true`
quick_probe_slurm() {
  local out
  out=$(ssh_site "id -un && sbatch --parsable -J site-probe -D $SITE_HOME -o /dev/null --wrap true" 2>&1) ||
    die_logs "ssh + sbatch over SSH failed: $out" "$SSHD_LOG" "$SLURM_DIR/log/slurmctld.log"
  [[ $out =~ ^$SITE_USER$'\n'[0-9]+$ ]] || die "ssh + sbatch over SSH printed '$out', expected '$SITE_USER' and a job id"
  say "probe: sbatch --wrap true by $SITE_USER over SSH -> job ${out#*$'\n'} submitted (site was already up)"
}

# sbatch --wrap true by bsite over SSH, wait until COMPLETED; check sacct per mode
probe_slurm() {
  local mode=$1 out jobid st deadline
  out=$(ssh_site "sbatch --parsable -J site-probe -D $SITE_HOME -o /dev/null --wrap true" 2>&1) ||
    die_logs "sbatch over SSH failed: $out" "$SLURM_DIR/log/slurmctld.log" "$SSHD_LOG"
  jobid=${out%%;*}
  [[ $jobid =~ ^[0-9]+$ ]] || die "sbatch over SSH printed '$out', expected a job id"
  deadline=$((EPOCHSECONDS + START_TIMEOUT))
  while :; do
    st=$(squeue -h -t all -j "$jobid" -o '%T' 9>&- 2>/dev/null || true)
    case $st in
      COMPLETED) break ;;
      FAILED|CANCELLED*|TIMEOUT|NODE_FAIL|OUT_OF_MEMORY|BOOT_FAIL|DEADLINE|PREEMPTED)
        die_logs "probe job $jobid ended $st ($(scontrol show job "$jobid" 9>&- 2>&1 | grep -oE 'Reason=[^ ]+|ExitCode=[^ ]+' | tr '\n' ' '))" \
          "$SLURM_DIR/log/slurmd.log" "$SLURM_DIR/log/slurmctld.log" ;;
    esac
    [ "$EPOCHSECONDS" -lt "$deadline" ] ||
      die_logs "probe job $jobid not COMPLETED after ${START_TIMEOUT}s (state '$st')" "$SLURM_DIR/log/slurmctld.log" "$SLURM_DIR/log/slurmd.log"
    sleep 0.1
  done
  if [ "$mode" = accounting ]; then
    deadline=$((EPOCHSECONDS + START_TIMEOUT))
    until [ "$(sacct -n -P -X -j "$jobid" -o State 9>&- 2>/dev/null)" = COMPLETED ]; do
      [ "$EPOCHSECONDS" -lt "$deadline" ] ||
        die_logs "sacct does not report probe job $jobid COMPLETED after ${START_TIMEOUT}s" "$SLURM_DIR/log/slurmdbd.log" "$SLURM_DIR/log/slurmctld.log"
      sleep 0.2
    done
    out=$(ssh_site "sacct -n -P -X -j $jobid -o JobID,State" 2>&1) || die "sacct over SSH failed: $out"
    [ "$out" = "$jobid|COMPLETED" ] || die "sacct over SSH printed '$out', expected '$jobid|COMPLETED'"
  else
    if out=$(ssh_site "sacct -n -j $jobid" 2>&1); then
      die "sacct works although accounting is off (printed '$out')"
    fi
  fi
  if [ "$mode" = accounting ]; then
    say "probe: sbatch --wrap true by $SITE_USER over SSH -> job $jobid COMPLETED (sacct: COMPLETED)"
  else
    say "probe: sbatch --wrap true by $SITE_USER over SSH -> job $jobid COMPLETED (sacct fails as expected: ${out//$'\n'/ })"
  fi
}

# ---------------------------------------------------------------- commands
cmd_start() {
  local mode=accounting batch_only=
  while [ $# -gt 0 ]; do
    case $1 in
      --no-accounting) mode=none ;;
      --batch-only) batch_only=1 ;;
      *) die "start: unknown option '$1'" ;;
    esac
    shift
  done
  check_root
  lock_state
  CLEAR_SITE_FILES_ON_LAUNCH=1
  local packages=("${BASE_PACKAGES[@]}")
  [ "$mode" = accounting ] && packages+=("${ACCT_PACKAGES[@]}")
  [ -n "$batch_only" ] || packages+=("${PG_PACKAGES[@]}" "${UI_PACKAGES[@]}")
  ensure_packages "${packages[@]}"
  clear_traffic_drop
  mark packages
  ensure_user; ensure_keys; write_site_env_script
  mark user+keys
  # the groups' chains (issue 12): /cvmfs, /eos, Calypso, pede and the groups' own job scripts as
  # contract-checking stand-ins (tests/site/standins/README.md); idempotent
  bash "$REPO/tests/site/standins/install.sh" / "$SITE_USER" >/dev/null
  mark standins
  ensure_sshd
  mark sshd
  ensure_munged
  mark munged

  local old_mode conf_changed=
  old_mode=$(cat "$MODE_FILE" 2>/dev/null || true)
  prepare_slurm_dirs
  slurm_conf_content "$mode" | write_if_changed "$SLURM_CONF" && conf_changed=1
  echo "$mode" > "$MODE_FILE"
  if [ -n "$conf_changed" ] && { alive slurmctld || alive slurmd; }; then
    say "slurm.conf changed (mode ${old_mode:-?} -> $mode): restarting slurmctld and slurmd"
    stop_daemon slurmd; stop_daemon slurmctld
  fi
  if [ "$mode" = accounting ]; then
    ensure_mariadb; mark mariadb
    ensure_slurmdbd; mark slurmdbd
  else
    if alive slurmdbd || alive mariadb; then
      say "no accounting: stopping slurmdbd and mariadb"
      stop_daemon slurmdbd; stop_daemon mariadb
    fi
  fi
  if ! alive slurmctld; then
    # slurmd talks to slurmctld at start; a slurmd without its controller restarts with it
    alive slurmd && stop_daemon slurmd
    start_slurmctld
  fi
  mark slurmctld
  alive slurmd || start_slurmd
  wait_node_idle
  mark slurmd+node
  if [ -z "$batch_only" ]; then ensure_postgres; mark postgres; fi
  if [ -z "$LAUNCHED" ] && [ -s "$SITE_JSON" ] && [ "$old_mode" = "$mode" ]; then
    quick_probe_slurm   # everything was already up and verified by an earlier start
  else
    check_ssh_login
    probe_slurm "$mode"
  fi
  mark probe
  write_site_files
  say "site up: ssh -i $CLIENT_KEY -o UserKnownHostsFile=$KNOWN_HOSTS -p $SSH_PORT $SITE_USER@127.0.0.1 (accounting: $([ "$mode" = accounting ] && echo on || echo off)); $([ -n "$batch_only" ] && echo "no postgres (--batch-only)" || echo "postgres 127.0.0.1:$PG_PORT (databases: ${PG_DATABASES[*]})"); $SITE_JSON"
  print_timings
}

# cancel unfinished Slurm jobs and wait until none runs, so that no job processes (slurmstepd)
# outlive slurmd and the next start begins with an empty queue
cancel_slurm_jobs() {
  alive slurmctld || return 0
  local users u deadline
  users=$(squeue -h -o '%u' -t PENDING,RUNNING,SUSPENDED,COMPLETING,CONFIGURING 9>&- 2>/dev/null | sort -u) || return 0
  [ -n "$users" ] || return 0
  for u in $users; do scancel -u "$u" 9>&- 2>/dev/null || true; done
  alive slurmd || return 0
  deadline=$((EPOCHSECONDS + STOP_TIMEOUT))
  while [ -n "$(squeue -h -o '%i' -t RUNNING,COMPLETING,CONFIGURING,SUSPENDED 9>&- 2>/dev/null)" ]; do
    [ "$EPOCHSECONDS" -lt "$deadline" ] || { say "Slurm jobs still running after ${STOP_TIMEOUT}s; stopping anyway"; break; }
    sleep 0.2
  done
  say "cancelled the unfinished Slurm jobs of: $users"
}

clear_traffic_drop() {  # a fault test that died mid-way must not leave the site unreachable
  if command -v nft >/dev/null && nft list table inet batchsite_fault >/dev/null 2>&1; then
    nft delete table inet batchsite_fault && say "removed a leftover traffic drop on port $SSH_PORT"
  fi
  return 0
}

cmd_stop() {
  check_root
  lock_state
  local d
  stop_daemon condor_master
  clear_traffic_drop
  cancel_slurm_jobs
  for d in postgres slurmd slurmctld slurmdbd mariadb munged sshd; do stop_daemon "$d"; done
  rm -f "$SITE_JSON" "$SITE_ENV"
  print_timings
}

cmd_status() {
  local d any=0 pid
  for d in sshd munged mariadb slurmdbd slurmctld slurmd postgres condor_master; do
    if alive "$d"; then pid=$(pid_of "$d"); printf '%-14s running (pid %s)\n' "$d" "$pid"; any=1
    else printf '%-14s stopped\n' "$d"; fi
  done
  echo "mode: $(cat "$MODE_FILE" 2>/dev/null || echo unknown)   state dir: $STATE"
  if alive slurmctld; then
    echo "--- sinfo"; sinfo 2>&1 || true
    echo "--- squeue"; squeue 2>&1 || true
  fi
  if alive condor_master; then
    echo "--- condor_status"; as_site_user condor_status -af Name State Activity Cpus Memory 2>&1 || true
    echo "--- condor_q"; as_site_user condor_q -nobatch 2>&1 || true
  fi
  [ "$any" -eq 1 ] || return 0
}

cmd_env() {
  [ -s "$SITE_ENV" ] || die "no $SITE_ENV: the site is not started (run 'site.sh start')"
  cat "$SITE_ENV"
}

# ---------------------------------------------------------------- HTCondor personal pool
# unpack_condor TARBALL SOURCE : its one top folder holding sbin/condor_master becomes $CONDOR_PREFIX
unpack_condor() {
  local tarball=$1 source=$2 parent tmp top
  parent=$(dirname "$CONDOR_PREFIX")
  install -d -m 755 "$parent"
  tmp=$(mktemp -d "$parent/.condor-unpack.XXXXXX")
  # GNU tar detects the compression (the project's build: zstd; the official tarball: gzip)
  tar -xf "$tarball" -C "$tmp" 9>&- || { rm -rf "$tmp"; die "unpacking $source failed"; }
  top=$(find "$tmp" -mindepth 3 -maxdepth 3 -path "$tmp/*/sbin/condor_master" -type f | head -n 1)
  [ -n "$top" ] || { rm -rf "$tmp"; die "$source has no <top folder>/sbin/condor_master"; }
  top=$(dirname "$(dirname "$top")")
  mv "$top" "$CONDOR_PREFIX"; rm -rf "$tmp"
  chmod 755 "$CONDOR_PREFIX"
  say "installed $("$CONDOR_PREFIX/bin/condor_version" 9>&- | head -1) into $CONDOR_PREFIX (from $source)"
}

# (3) the official release tarball, verified against CONDOR_RELEASE_SHA256 before unpacking
download_condor() {
  [[ $CONDOR_RELEASE_SHA256 =~ ^[0-9a-f]{64}$ ]] ||
    die "no HTCondor: no tarball (BATCHSITE_CONDOR_TARBALL unset and no $CONDOR_SHARED_TARBALL), no condor_master on PATH, and the official release tarball $CONDOR_RELEASE_URL has no pinned sha256 here: set BATCHSITE_CONDOR_RELEASE_SHA256 to the sha256 published beside it (64 hex digits), or install HTCondor (condor_master on PATH) or set BATCHSITE_CONDOR_TARBALL"
  ensure_packages curl ca-certificates
  local dl err
  dl=$(mktemp "$STATE/run/condor-release.XXXXXX")
  err=$(curl -fsSL --retry 2 --connect-timeout 20 -o "$dl" "$CONDOR_RELEASE_URL" 2>&1 9>&-) ||
    { rm -f "$dl"; die "downloading the official HTCondor tarball $CONDOR_RELEASE_URL failed: $(tail -n 1 <<<"$err") (no network? then set BATCHSITE_CONDOR_TARBALL to a copy of it, or install HTCondor)"; }
  local got
  got=$(sha256sum "$dl" | cut -d' ' -f1)
  [ "$got" = "$CONDOR_RELEASE_SHA256" ] ||
    { rm -f "$dl"; die "$CONDOR_RELEASE_URL has sha256 $got, expected $CONDOR_RELEASE_SHA256: not unpacked"; }
  unpack_condor "$dl" "the official release tarball $CONDOR_RELEASE_URL (sha256 verified)"
  rm -f "$dl"
}

# $CONDOR_PREFIX/sbin/condor_master, from the first source that exists (usage: install-condor)
install_condor() {
  [ -x "$CONDOR_PREFIX/sbin/condor_master" ] && return 0
  if [ -e "$CONDOR_PREFIX" ] || [ -L "$CONDOR_PREFIX" ]; then
    { [ -d "$CONDOR_PREFIX" ] && [ ! -L "$CONDOR_PREFIX" ] && rmdir "$CONDOR_PREFIX" 2>/dev/null; } ||
      die "$CONDOR_PREFIX exists but has no sbin/condor_master: remove it or set BATCHSITE_CONDOR_PREFIX"
  fi
  local tarball=${BATCHSITE_CONDOR_TARBALL:+$(realpath -m "$BATCHSITE_CONDOR_TARBALL")} master
  # (1) a tarball: the one named (which must then exist), else the project's build beside the repo
  if [ -n "$tarball" ]; then
    [ -f "$tarball" ] || die "BATCHSITE_CONDOR_TARBALL=$tarball: no such file"
    unpack_condor "$tarball" "BATCHSITE_CONDOR_TARBALL=$tarball"; return 0
  fi
  if [ -f "$CONDOR_SHARED_TARBALL" ]; then unpack_condor "$CONDOR_SHARED_TARBALL" "the project's build $CONDOR_SHARED_TARBALL"; return 0; fi
  # (2) an installed HTCondor: its release dir (<dir>/sbin/condor_master, <dir>/bin/condor_submit)
  if master=$(command -v condor_master); then
    local release
    release=$(dirname "$(dirname "$(realpath "$master")")")
    [ -x "$release/bin/condor_submit" ] ||
      die "condor_master on PATH ($master) has no $release/bin/condor_submit beside it: not a release dir; set BATCHSITE_CONDOR_PREFIX to one"
    install -d -m 755 "$(dirname "$CONDOR_PREFIX")"
    ln -s "$release" "$CONDOR_PREFIX"
    say "using the HTCondor on PATH: $CONDOR_PREFIX -> $release ($("$release/bin/condor_version" 9>&- | head -1))"
    return 0
  fi
  # (3) the official release tarball
  download_condor
}

cmd_install_condor() {
  check_root
  lock_state
  install_condor
  say "HTCondor: $CONDOR_PREFIX/sbin/condor_master ($("$CONDOR_PREFIX/bin/condor_version" 9>&- | head -1))"
}

# lxplus +JobFlavour limits (FORMATS.md section 10), scaled by BATCHSITE_FLAVOUR_SCALE (a positive
# number or fraction; default 5/1200: espresso 20 min -> 5 s, microcentury 1 h -> 15 s; 1 = lxplus)
CONDOR_POLICY_CFG=$CONDOR_DIR/condor_config.policy
CONDOR_FLAVOUR_SCALE=${BATCHSITE_FLAVOUR_SCALE:-5/1200}
CONDOR_FLAVOURS=(espresso 1200 microcentury 3600 longlunch 7200 workday 28800 tomorrow 86400
                 testmatch 259200 nextweek 604800)

# prints "FLAVOUR SECONDS" per flavour: round(lxplus seconds x scale), at least 1
condor_flavour_limits() {
  [[ $CONDOR_FLAVOUR_SCALE =~ ^[0-9]+(\.[0-9]+)?(/[0-9]+(\.[0-9]+)?)?$ ]] &&
    awk -v s="$CONDOR_FLAVOUR_SCALE" 'BEGIN { n = split(s, p, "/"); d = (n == 2) ? p[2] + 0 : 1
      if (d <= 0 || p[1] + 0 <= 0) exit 1; f = p[1] / d }
      { v = int($2 * f + 0.5); if (v < 1) v = 1; print $1, v }' \
      < <(printf '%s %s\n' "${CONDOR_FLAVOURS[@]}") ||
    die "BATCHSITE_FLAVOUR_SCALE='$CONDOR_FLAVOUR_SCALE': expected a positive number or fraction (e.g. 5/1200, 0.5, 1)"
}

# the lxplus-like job policy (LOCAL_CONFIG_FILE of the pool; a change -> condor_reconfig)
condor_policy_content() {
  local limits body name secs expr espresso
  limits=$(condor_flavour_limits) || exit 1
  espresso=$(awk '$1 == "espresso" {print $2}' <<<"$limits")
  # nested ifThenElse over the flavours, unknown/missing -> espresso (the lxplus default);
  # toLower(..) =?= : case-insensitive, and false (not undefined) for a non-string JobFlavour
  expr=$espresso
  while read -r name secs; do
    [ "$name" = espresso ] && continue
    expr="ifThenElse(toLower(JobFlavour) =?= \"$name\", $secs, $expr)"
  done < <(tac <<<"$limits")
  body=$(cat <<EOF
BATCHSITE_FLAVOUR_SCALE = $CONDOR_FLAVOUR_SCALE
# MaxRuntime (s) per flavour = lxplus limit x scale: $(awk '{printf "%s%s=%s", (NR > 1 ? " " : ""), $1, $2}' <<<"$limits")

# request_memory defaults to 2000 MB (2 GB per core) when the submit file has none
JOB_DEFAULT_REQUESTMEMORY = 2000

# +JobFlavour -> MaxRuntime (s), applied by the schedd at submission to jobs without an explicit
# +MaxRuntime; no flavour -> JobFlavour = "espresso" (lxplus default); unknown flavour ->
# espresso's limit. Not for DAGMan (scheduler universe 7) or local universe (12) jobs.
JOB_TRANSFORM_NAMES = BatchsiteFlavour
JOB_TRANSFORM_BatchsiteFlavour @=end
  REQUIREMENTS MaxRuntime =?= undefined && JobUniverse =!= 7 && JobUniverse =!= 12
  DEFAULT JobFlavour "espresso"
  EVALSET MaxRuntime $expr
@end

# running longer than MaxRuntime (seconds) -> removed, with lxplus's reason text plus the limit;
# held longer than $CONDOR_HELD_REMOVE_AFTER s -> removed. Evaluated every second here
# (lxplus: minutes), so a job is removed 1-2 s after its limit.
PERIODIC_EXPR_INTERVAL = 1
SYSTEM_PERIODIC_REMOVE = (JobStatus == 2 && MaxRuntime =!= undefined && (time() - EnteredCurrentStatus) > MaxRuntime) || (JobStatus == 5 && (time() - EnteredCurrentStatus) > $CONDOR_HELD_REMOVE_AFTER)
SYSTEM_PERIODIC_REMOVE_REASON = ifThenElse(JobStatus == 5, "Job was held for more than $CONDOR_HELD_REMOVE_AFTER seconds", strcat("Job removed by SYSTEM_PERIODIC_REMOVE due to wall time exceeded allowed max. (MaxRuntime ", MaxRuntime, " s", ifThenElse(isString(JobFlavour), strcat(", JobFlavour ", JobFlavour), ""), ")"))
EOF
)
  printf '# batchsite test site: lxplus-like job policy (written by tests/site/site.sh start-condor)\n'
  printf 'BATCHSITE_POLICY_ID = %s\n' "$(sha256sum <<<"$body" | cut -c1-16)"
  printf '%s\n' "$body"
}

condor_config_content() {
  cat <<EOF
# batchsite test site: HTCondor personal pool run by $SITE_USER (written by tests/site/site.sh)
RELEASE_DIR = $CONDOR_PREFIX
LOCAL_DIR = $CONDOR_DIR
LOCAL_CONFIG_FILE = $CONDOR_POLICY_CFG
LOCAL_CONFIG_DIR =
REQUIRE_LOCAL_CONFIG_FILE = true
LOG = \$(LOCAL_DIR)/log
SPOOL = \$(LOCAL_DIR)/spool
EXECUTE = \$(LOCAL_DIR)/execute
LOCK = \$(LOCAL_DIR)/lock
RUN = \$(LOCAL_DIR)/run
SEC_PASSWORD_DIRECTORY = \$(LOCAL_DIR)/passwords.d
SEC_TOKEN_DIRECTORY = \$(LOCAL_DIR)/tokens.d
SEC_TOKEN_SYSTEM_DIRECTORY = \$(LOCAL_DIR)/system_tokens.d
MAIL = /bin/true
SENDMAIL = /bin/true

use ROLE : Personal
CONDOR_HOST = 127.0.0.1
COLLECTOR_HOST = \$(CONDOR_HOST):0
NETWORK_INTERFACE = 127.0.0.1
MASTER_ADDRESS_FILE = \$(LOG)/.master_address
COLLECTOR_ADDRESS_FILE = \$(LOG)/.collector_address
SCHEDD_ADDRESS_FILE = \$(LOG)/.schedd_address
JOB_QUEUE_LOG = \$(SPOOL)/job_queue.log

# fast test cycles
UPDATE_INTERVAL = 2
POLLING_INTERVAL = 2
NEGOTIATOR_INTERVAL = 2
NEGOTIATOR_MIN_INTERVAL = 1
NEGOTIATOR_CYCLE_DELAY = 1
SCHEDD_INTERVAL = 2
SCHEDD_MIN_INTERVAL = 1
STARTD_UPDATE_INTERVAL = 2
STARTER_UPDATE_INTERVAL = 2
STARTER_INITIAL_UPDATE_INTERVAL = 2
SHADOW_QUEUE_UPDATE_INTERVAL = 2
DAGMAN_USER_LOG_SCAN_INTERVAL = 1
RUNBENCHMARKS = 0
STARTD_CRON_JOBLIST =

# one partitionable slot: 4 cpus, 2 GB per cpu (over-commit is fine for tests)
NUM_CPUS = 4
MEMORY = 8192
NUM_SLOTS = 1
NUM_SLOTS_TYPE_1 = 1
SLOT_TYPE_1 = 100%
SLOT_TYPE_1_PARTITIONABLE = TRUE
START = TRUE
SUSPEND = FALSE
PREEMPT = FALSE
KILL = FALSE

# root-less: no cgroups, no containers
BASE_CGROUP =
CGROUP_MEMORY_LIMIT_POLICY = none
SINGULARITY = /usr/bin/false
DOCKER =

# lxplus-like job policy: in \$(LOCAL_CONFIG_FILE) (condor_policy_content), so that a change
# of the policy settings is applied by condor_reconfig instead of a restart

# security: FS authentication only; only the pool user is authorized
SEC_DAEMON_AUTHENTICATION = REQUIRED
SEC_CLIENT_AUTHENTICATION = REQUIRED
SEC_DEFAULT_AUTHENTICATION_METHODS = FS, IDTOKENS
# 25.14+ clients (PyPI htcondor) against these 25.13 daemons
SEC_FS_ENFORCE_CHANNEL_BINDING = false
self = \$(USERNAME)@\$(UID_DOMAIN) \$(USERNAME)@\$(IPV4_ADDRESS) \$(USERNAME)@\$(FULL_HOSTNAME) \$(USERNAME)@\$(HOSTNAME) \$(USERNAME)@127.0.0.1
ALLOW_READ = \$(self)
ALLOW_WRITE = \$(self)
ALLOW_DAEMON = \$(self)
ALLOW_ADMINISTRATOR = \$(self)
ALLOW_ADVERTISE = \$(self)
ALLOW_NEGOTIATOR = \$(self)
ALLOW_READ_COLLECTOR = \$(ALLOW_READ)
ALLOW_READ_STARTD = \$(ALLOW_READ)
ALLOW_NEGOTIATOR_SCHEDD = \$(ALLOW_NEGOTIATOR)
ALLOW_WRITE_COLLECTOR = \$(ALLOW_WRITE)
ALLOW_WRITE_STARTD = \$(ALLOW_WRITE)
EOF
}

# the schedd runs the policy of $CONDOR_POLICY_CFG (its BATCHSITE_POLICY_ID)
condor_policy_loaded() {
  local want got
  want=$(awk '$1 == "BATCHSITE_POLICY_ID" {print $3}' "$CONDOR_POLICY_CFG")
  got=$(as_site_user condor_config_val -schedd BATCHSITE_POLICY_ID) || return 1
  [ "$got" = "$want" ] || { echo "schedd has policy '$got', want '$want'" >&2; return 1; }
}
condor_reconfig_policy() {
  local out
  say "condor policy changed (BATCHSITE_FLAVOUR_SCALE=$CONDOR_FLAVOUR_SCALE, BATCHSITE_CONDOR_HELD_REMOVE_AFTER=$CONDOR_HELD_REMOVE_AFTER): condor_reconfig"
  out=$(as_site_user condor_reconfig 2>&1) || die_daemon condor_master "condor_reconfig failed: $out"
  wait_for condor_master "the schedd to load the new policy" condor_policy_loaded
}

condor_slot_unclaimed() { local out; out=$(as_site_user condor_status -af Name State) && grep -q Unclaimed <<<"$out"; }

probe_condor() {
  local out cluster st deadline
  out=$(ssh_site "set -e; . $ENV_SCRIPT; mkdir -p $PROBE_DIR/condor; cd $PROBE_DIR/condor; rm -f probe.log probe.out probe.err
printf 'executable = /bin/true\nlog = probe.log\noutput = probe.out\nerror = probe.err\nqueue\n' > probe.sub
condor_submit -terse probe.sub" 2>&1) || die_daemon condor_master "condor_submit over SSH failed: $out"
  cluster=$(grep -oE '^[0-9]+' <<<"$out" | head -1)
  [ -n "$cluster" ] || die "condor_submit over SSH printed '$out', expected 'N.0 - N.0'"
  deadline=$((EPOCHSECONDS + START_TIMEOUT))
  while :; do
    st=$(as_site_user condor_history -limit 1 "$cluster.0" -af JobStatus ExitCode 2>/dev/null || true)
    [ "$st" = "4 0" ] && break
    [ -n "$st" ] && die_daemon condor_master "probe job $cluster.0 ended with JobStatus/ExitCode '$st'"
    [ "$EPOCHSECONDS" -lt "$deadline" ] ||
      die_daemon condor_master "probe job $cluster.0 not completed after ${START_TIMEOUT}s (condor_q: $(as_site_user condor_q "$cluster.0" -af JobStatus HoldReason 2>&1))"
    sleep 0.1
  done
  out=$(ssh_site ". $ENV_SCRIPT && condor_history -limit 1 $cluster.0 -af JobStatus ExitCode" 2>&1) || die "condor_history over SSH failed: $out"
  [ "$out" = "4 0" ] || die "condor_history over SSH printed '$out', expected '4 0'"
  say "probe: condor_submit by $SITE_USER over SSH -> job $cluster.0 completed (exit 0)"
}

cmd_start_condor() {
  check_root
  lock_state
  ensure_packages "${BASE_PACKAGES[@]}"
  ensure_user; ensure_keys
  mark packages+user
  install_condor
  mark install
  local changed='' policy
  policy=$(condor_policy_content)   # dies on a bad BATCHSITE_FLAVOUR_SCALE
  install -d -o "$SITE_USER" -g "$SITE_USER" -m 755 "$CONDOR_DIR"
  condor_config_content | write_if_changed "$CONDOR_CFG" && changed=1
  printf '%s\n' "$policy" | write_if_changed "$CONDOR_POLICY_CFG" || true
  chown "$SITE_USER:$SITE_USER" "$CONDOR_CFG" "$CONDOR_POLICY_CFG"
  write_site_env_script
  ensure_sshd
  mark sshd
  if alive condor_master && [ -n "$changed" ]; then say "condor config changed: restarting the pool"; stop_daemon condor_master; fi
  # policy settings changed (or an earlier reconfig was interrupted): the running schedd's
  # BATCHSITE_POLICY_ID differs from the file's -> condor_reconfig (no restart, queue kept)
  if alive condor_master && ! condor_policy_loaded 2>/dev/null; then condor_reconfig_policy; mark reconfig; fi
  if ! alive condor_master; then
    local d
    for d in log spool execute lock run passwords.d tokens.d system_tokens.d; do
      install -d -o "$SITE_USER" -g "$SITE_USER" -m 755 "$CONDOR_DIR/$d"
    done
    chmod 700 "$CONDOR_DIR/passwords.d" "$CONDOR_DIR/tokens.d" "$CONDOR_DIR/system_tokens.d"
    rm -f "$CONDOR_DIR"/log/.*_address
    launch condor_master condor_master "$CONDOR_DIR/log/master.stdout" \
      setpriv --reuid="$SITE_USER" --regid="$SITE_USER" --init-groups \
      env -i HOME="$SITE_HOME" USER="$SITE_USER" LOGNAME="$SITE_USER" LANG=C.UTF-8 \
      PATH="$CONDOR_PREFIX/bin:$CONDOR_PREFIX/sbin:/usr/bin:/bin" CONDOR_CONFIG="$CONDOR_CFG" \
      "$CONDOR_PREFIX/sbin/condor_master" -f
    say "condor_master: pid $(pid_of condor_master) (user $SITE_USER, CONDOR_CONFIG=$CONDOR_CFG)"
  fi
  local was_up=
  [ -z "$LAUNCHED" ] && grep -q '"condor": true' "$SITE_JSON" 2>/dev/null && was_up=1
  wait_for condor_master "an Unclaimed slot" condor_slot_unclaimed
  wait_for condor_master "the schedd to load the policy" condor_policy_loaded
  mark slot
  if [ -n "$was_up" ]; then
    # already up and verified by an earlier start-condor: one SSH round trip
    local out
    out=$(ssh_site ". $ENV_SCRIPT && condor_status -af Name State" 2>&1) || die_daemon condor_master "condor_status over SSH failed: $out"
    say "probe: condor_status by $SITE_USER over SSH: ${out//$'\n'/; } (pool was already up)"
  else
    probe_condor
  fi
  mark probe
  write_site_files
  print_timings
}

cmd_stop_condor() {
  check_root
  lock_state
  stop_daemon condor_master
  [ -s "$SITE_JSON" ] && write_site_files
  print_timings
}

cmd_fault() {
  check_root
  lock_state
  case $1 in
    stop-sshd) stop_daemon sshd ;;
    start-sshd) ensure_user; ensure_keys; ensure_sshd ;;
    restart-sshd) stop_daemon sshd; ensure_user; ensure_keys; ensure_sshd ;;
    stop-slurmctld) stop_daemon slurmctld ;;
    start-slurmctld) alive slurmctld && say "slurmctld: already running (pid $(pid_of slurmctld))" || start_slurmctld ;;
    drop-traffic)
      command -v nft >/dev/null || ensure_packages nftables
      nft delete table inet batchsite_fault 2>/dev/null || true
      # both directions, so packets of established sessions vanish too (no RST, no FIN)
      nft -f - <<NFT
table inet batchsite_fault {
  chain input { type filter hook input priority -10; policy accept; tcp dport $SSH_PORT drop; tcp sport $SSH_PORT drop; }
  chain output { type filter hook output priority -10; policy accept; tcp dport $SSH_PORT drop; tcp sport $SSH_PORT drop; }
}
NFT
      say "traffic to and from port $SSH_PORT dropped" ;;
    restore-traffic)
      if command -v nft >/dev/null && nft list table inet batchsite_fault >/dev/null 2>&1; then
        nft delete table inet batchsite_fault
      fi
      say "traffic to and from port $SSH_PORT restored" ;;
    kill-schedd)
      local pid
      pid=$(pgrep -u "$SITE_USER" -x condor_schedd) || die "no condor_schedd of $SITE_USER is running"
      kill -KILL $pid
      say "condor_schedd: SIGKILL $pid" ;;
  esac
  print_timings
}

usage() {
  sed -n '2,/^set -euo/p' "${BASH_SOURCE[0]}" | sed '$d' | sed 's/^# \{0,1\}//' >&2
  exit 2
}

case "${1:-}" in
  start) shift; cmd_start "$@" ;;
  stop) cmd_stop ;;
  status) cmd_status ;;
  env) cmd_env ;;
  start-condor) cmd_start_condor ;;
  install-condor) cmd_install_condor ;;
  stop-condor) cmd_stop_condor ;;
  restart-sshd|stop-sshd|start-sshd|stop-slurmctld|start-slurmctld|drop-traffic|restore-traffic|kill-schedd)
    cmd_fault "$1" ;;
  -h|--help|help) usage ;;
  *) usage ;;
esac
