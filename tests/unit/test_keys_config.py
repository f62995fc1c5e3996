import pytest

from batchsite.config import SiteConfigError, site_config_from_connection
from batchsite.keys import job_key
from batchsite.model import SAFE_NAME


def test_job_key_is_deterministic_and_ignores_try_number():
    a = job_key("rg_campaign", "manual__2026-01-01T00:00:00+00:00", "round_01.submit", 0, 0)
    assert a == job_key("rg_campaign", "manual__2026-01-01T00:00:00+00:00", "round_01.submit", 0, 0)
    assert SAFE_NAME.match(a)
    others = {job_key("rg_campaign", "r", "t", mi, rnd) for mi in (-1, 0, 1) for rnd in (0, 1)}
    assert len(others) == 6


def test_site_config_errors_name_the_extra():
    with pytest.raises(SiteConfigError, match="remote_root.*absolute"):
        site_config_from_connection("c", "h", 22, "u", {"scheduler": "slurm", "remote_root": "rel/dir"})
    with pytest.raises(SiteConfigError, match="remote_rot: unknown extra"):
        site_config_from_connection("c", "h", 22, "u", {"scheduler": "slurm", "remote_rot": "/x"})
    with pytest.raises(SiteConfigError, match="scheduler"):
        site_config_from_connection("c", "h", 22, "u", {"scheduler": "pbs", "remote_root": "/x"})
    cfg = site_config_from_connection("c", "h", 2222, "u", {"scheduler": "slurm", "remote_root": "/x/",
                                                          "key_file": "/k", "host_key": "ssh-ed25519 AAA"})
    assert cfg.remote_root == "/x" and cfg.transport == "ssh" and cfg.port == 2222
    assert "host_key" not in cfg.public_dict()  # SSH provider extras stay with the provider
