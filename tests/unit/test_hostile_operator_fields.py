"""Hostile values in the template fields of every public operator and sensor (issue 13, defect 5).

A template field is text a DAG author (or a Param, or an upstream XCom) controls. Every value
that reaches a rendered file or a remote command is either refused with an error naming the
field, or arrives at the job verbatim: nothing a value holds is ever executed. The canary is a
file that any executed fragment would create.
"""

from __future__ import annotations

import asyncio
import subprocess
from importlib import resources
from pathlib import Path

import pytest
from airflow.sdk.exceptions import AirflowException, TaskDeferred

from batchsite.backends.base import get_backend
from batchsite.config import SiteConfig
from batchsite.hooks.site import BatchSiteHook
from batchsite.operators.condor import CondorDagOperator
from batchsite.operators.round import BatchRoundOperator
from batchsite.operators.slurm import SlurmArrayOperator
from batchsite.rounds import RoundRequest, RoundWatch, spec_from_request
from batchsite.sensors.job import BatchJobSensor, CondorDagSensor, SlurmJobSensor

OPERATORS = (BatchRoundOperator, SlurmArrayOperator, CondorDagOperator)
SENSORS = (BatchJobSensor, SlurmJobSensor, CondorDagSensor)

#: label values that would start an executed line in a script comment, or are not one label
BAD_LABELS = ("round\ntouch {canary}", "round\rtouch {canary}", "a\x00b", "tab\there", " ", "x" * 201)


def hostile_words(canary: Path) -> list[str]:
    """Shell fragments that create the canary if anything evaluates them."""
    c = str(canary)
    return [f"$(touch {c})", f"`touch {c}`", f"; touch {c}", f"' ; touch {c} ; '", f'" ; touch {c} ; "',
            f"| touch {c}", f"&& touch {c}", f"line one\ntouch {c}", "$HOME", "*", "~", "\\", "{a,b}", "", " lead"]


@pytest.mark.parametrize("operator_class", OPERATORS, ids=lambda c: c.__name__)
@pytest.mark.parametrize("bad", BAD_LABELS, ids=repr)
def test_a_bad_label_is_refused_naming_the_field(operator_class, bad, tmp_path):
    bad = bad.format(canary=tmp_path / "CANARY")
    by_argument = operator_class(task_id="t", units=[["true"]], round_label=bad)
    by_request = operator_class(task_id="t", units=[["true"]], round_request={"label": bad})
    for op in (by_argument, by_request):
        with pytest.raises(AirflowException, match="label"):
            op.effective_request()
    # nor can a label reach a rendered file or a trigger any other way
    with pytest.raises(ValueError, match="label"):
        RoundWatch(site_conn_id="local", round_key="k", workdir="/w", fanout_id="1", indices="0", label=bad)


@pytest.mark.parametrize("scheduler", ("slurm", "htcondor", "local"))
def test_hostile_argv_reaches_the_unit_verbatim_on_every_backend(scheduler, tmp_path):
    """Render the round as the backend does, then run each unit's line of the rendered unit
    table through the real lookup function (unit_table.sh) in bash."""
    canary = tmp_path / "CANARY"
    words = hostile_words(canary)
    cfg = SiteConfig(conn_id="c", scheduler=scheduler, transport="local", remote_root=str(tmp_path))
    request = RoundRequest(units=[["printf", "<%s>\\n", *words], ["printf", "<%s>\\n", words[0]]],
                           fanin=["printf", "%s", *words], label="hostile words",
                           env={"HOSTILE_ENV": words[2]})
    spec = spec_from_request(request, key="bs-hostile-0123456789ab", cfg=cfg,
                             site_path=lambda rel: f"{tmp_path}/{rel}")
    rendered = get_backend(scheduler).render_round(spec)
    table = tmp_path / "units.tab"
    table.write_text(rendered.files["units.tab"])
    lookup = resources.files("batchsite.backends").joinpath("unit_table.sh").read_text()
    out = subprocess.run(["bash", "-c", f'{lookup}\nbs_unit "$1" 0', "t", str(table)],
                         capture_output=True, text=True, timeout=30)
    assert out.returncode == 0, out.stderr
    assert out.stdout == "".join(f"<{w}>\n" for w in words)
    assert not canary.exists()
    for name, text in rendered.files.items():
        if name.endswith(".sh"):  # every rendered script still parses with these values in it
            check = subprocess.run(["bash", "-n", "-c", text], capture_output=True, text=True)
            assert check.returncode == 0, (name, check.stderr)


def test_hostile_argv_fanin_and_env_run_verbatim_on_the_local_site(local_root, tmp_path):
    """End to end on the local site (real processes): the units, the fan-in and the round's
    environment carry every hostile word to the job unchanged."""
    canary = tmp_path / "CANARY"
    words = hostile_words(canary)
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    record = 'for w in "$@"; do printf "<%s>\\n" "$w"; done > "$0"; printf "<%s>\\n" "$HOSTILE_ENV" >> "$0"'
    op = BatchRoundOperator(
        task_id="hostile", site_conn_id="local", round_label="hostile",
        units=[["sh", "-c", record, str(out_dir / "unit0"), *words]],
        fanin=["sh", "-c", record, str(out_dir / "fanin"), *words],
        env={"HOSTILE_ENV": words[0]}, watch_timeout=120)
    ti = type("TI", (), {"dag_id": "d", "run_id": "r", "task_id": "hostile", "map_index": -1})()
    try:
        result = op.execute({"ti": ti})  # a round done by the first look finishes without deferring
    except TaskDeferred as deferred:
        async def first_event():
            async for event in deferred.trigger.run():
                return event.payload

        result = op.execute_complete({"ti": ti}, asyncio.run(asyncio.wait_for(first_event(), 120)))
    assert result["succeeded"], result
    expected = "".join(f"<{w}>\n" for w in words) + f"<{words[0]}>\n"
    assert (out_dir / "unit0").read_text() == expected
    assert (out_dir / "fanin").read_text() == expected
    assert not canary.exists()


@pytest.mark.parametrize("sensor_class", SENSORS, ids=lambda c: c.__name__)
@pytest.mark.parametrize("field", ("job_id", "fanin_id"))
def test_a_hostile_job_id_is_refused_by_every_sensor(sensor_class, field, local_root, tmp_path):
    canary = tmp_path / "CANARY"
    for word in hostile_words(canary)[:8]:
        kwargs = {"job_id": "123", field: word}
        sensor = sensor_class(task_id="s", site_conn_id="local", indices=[0], **kwargs)
        hook = BatchSiteHook("local")
        try:
            with pytest.raises(AirflowException, match="job id"):
                sensor._submission_of(hook)
        finally:
            hook.close()
    assert not canary.exists()
