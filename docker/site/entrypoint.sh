#!/usr/bin/env bash
# The batch site container (docker/compose.yaml): start sshd + Slurm (tests/site/site.sh start
# --batch-only) and the HTCondor pool (start-condor), then publish the SSH client key and the
# site's host key to $BATCHSITE_KEYS_DIR (the `site-keys` volume the Airflow containers mount
# read-only) and mark it ready; on SIGTERM (docker compose stop/down) stop every daemon.
set -euo pipefail
site=/opt/batchsite/tests/site/site.sh
state=${BATCHSITE_SITE_DIR:?}
keys=${BATCHSITE_KEYS_DIR:?}
#: the uid the apache/airflow image runs as: it must be able to read the private key
airflow_uid=${AIRFLOW_UID:-50000}

rm -f "$keys/ready"
bash "$site" start --batch-only
bash "$site" start-condor

# temp names, then rename: a reader never sees half a key
tmp=$(mktemp -d "$keys/.publish.XXXXXX")
install -m 600 -o "$airflow_uid" "$state/ssh/id_ed25519" "$tmp/id_ed25519"
# the other containers reach this one as host `site`, port 22 (no [host]:port form for 22)
printf 'site %s\n' "$(cut -d' ' -f1,2 "$state/ssh/ssh_host_ed25519_key.pub")" > "$tmp/known_hosts"
chmod 644 "$tmp/known_hosts"
mv -f "$tmp/id_ed25519" "$keys/id_ed25519"
mv -f "$tmp/known_hosts" "$keys/known_hosts"
rmdir "$tmp"
touch "$keys/ready"
echo "entrypoint: site ready; client key and known_hosts in $keys"

trap 'rm -f "$keys/ready"; bash "$site" stop; exit 0' TERM INT
sleep infinity &
wait $!
