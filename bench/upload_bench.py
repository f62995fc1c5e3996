"""Benchmark (prints, does not assert): bytes/s of one upload over the ``ssh`` transport
(paramiko), fed as 1 MB views (what ``SSHTransport`` does) side by side with paramiko's own
``Channel.sendall`` of the whole buffer (quadratic: it re-slices the rest after every packet),
with the ``openssh`` transport as the reference. Same connection, same bytes, one run.

    .venv/bin/python bench/upload_bench.py [--mb 8 32 64]

Needs the real test site (``bash tests/site/site.sh start``).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from batchsite.config import site_config_from_connection  # noqa: E402
from batchsite.hooks.connection import transport_for_conn  # noqa: E402


def _config(kind: str):
    from tests.conftest import STATE, site_conn

    info = json.loads((STATE / "site.json").read_text())
    conn = site_conn(info, "slurm")
    os.environ["AIRFLOW_CONN_BENCH_SITE"] = json.dumps(conn)
    return site_config_from_connection("bench_site", conn["host"], conn["port"], conn["login"],
                                       {**conn["extra"], "transport": kind})


def _plain_sendall(transport, data: bytes) -> float:
    """paramiko's sendall of the whole buffer on the transport's own connection."""
    chan = transport._connect().get_transport().open_session()
    chan.exec_command("cat > /dev/null")
    t0 = time.monotonic()
    chan.sendall(data)
    chan.shutdown_write()
    assert chan.recv_exit_status() == 0
    return time.monotonic() - t0


def _run(transport, data: bytes) -> float:
    t0 = time.monotonic()
    r = transport.run(["sh", "-c", "cat > /dev/null"], stdin=data)
    assert r.returncode == 0, r.err
    return time.monotonic() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--mb", type=int, nargs="+", default=[8, 32, 64])
    a = ap.parse_args()
    ssh, openssh = (transport_for_conn(_config(k)) for k in ("ssh", "openssh"))
    print(f"{'MB':>4} | {'ssh 1MB views':>14} | {'paramiko sendall':>16} | {'openssh':>8} | speed-up")
    for mb in a.mb:
        data = os.urandom(mb << 20)
        t_views, t_plain, t_open = _run(ssh, data), _plain_sendall(ssh, data), _run(openssh, data)
        print(f"{mb:>4} | {mb / t_views:>9.1f} MB/s | {mb / t_plain:>11.1f} MB/s | {mb / t_open:>3.0f} MB/s | "
              f"{t_plain / t_views:.1f}x")
    ssh.close()
    openssh.close()


if __name__ == "__main__":
    main()
