"""The campaign DAGs' Params are their params model's fields: the UI form (Airflow's JSON-schema
check, also ``dags trigger`` and the REST API) and the first task's check (the model) accept and
refuse the same values, bounds included. Before, the form missed several upper bounds the
first task enforced (samples, throttle, seed, tolerance, time_minutes, mem_mb, ...)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest
from airflow.sdk.definitions.param import ParamValidationError
from pydantic import ValidationError

from batchsite.campaign.common import param_kwargs
from batchsite.campaign.faser import FaserParams
from batchsite.campaign.rg import MAX_BATCHES, MAX_SAMPLES, MAX_SEED, RGParams

REPO = Path(__file__).resolve().parents[2]
DAGS = {"rg_campaign": RGParams, "faser_alignment": FaserParams}


def dag_params(dag_file: str) -> dict:
    spec = importlib.util.spec_from_file_location(f"dag_{dag_file}", REPO / "dags" / f"{dag_file}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module.PARAMS


@pytest.mark.parametrize("dag_file", sorted(DAGS))
def test_every_param_is_a_model_field_with_its_schema_and_default(dag_file):
    model, params = DAGS[dag_file], dag_params(dag_file)
    assert set(params) == set(model.model_fields)  # every field has a Param, and nothing else
    for name, param in params.items():
        expected = param_kwargs(model, name)
        assert param.value == expected.pop("default"), name
        form = {k: v for k, v in param.schema.items() if k not in ("title", "description")}
        assert form == {k: v for k, v in expected.items() if k != "description"}, name
        assert param.schema["title"], name


@pytest.mark.parametrize(("name", "too_big"), [
    ("samples", MAX_SAMPLES + 1), ("batches", MAX_BATCHES + 1), ("throttle", MAX_BATCHES + 1),
    ("seed", MAX_SEED + 1), ("tolerance", 2.5), ("time_minutes", 60 * 24 * 7 + 1), ("shifts", [0.1] * 65),
    ("version", "../x"), ("site_conn_id", "a b"), ("fp_version", "x;y"),
])
def test_the_form_refuses_what_the_first_task_refuses(name, too_big):
    param = dag_params("rg_campaign")[name]
    with pytest.raises(ParamValidationError):
        param.resolve(too_big)
    with pytest.raises(ValidationError, match=name):
        RGParams.model_validate({name: too_big})


@pytest.mark.parametrize(("name", "bad"), [("run", "11705x"), ("files", "400-4o6"), ("year", 2041),
                                           ("max_rescues", 11), ("tolerance", 0)])
def test_the_faser_form_refuses_what_the_first_task_refuses(name, bad):
    param = dag_params("faser_alignment")[name]
    with pytest.raises(ParamValidationError):
        param.resolve(bad)
    with pytest.raises(ValidationError, match=name):
        FaserParams.model_validate({name: bad})


def test_the_nightly_checks_fixed_conf_passes_both_checks_of_rg_campaign():
    spec = importlib.util.spec_from_file_location("dag_rg_nightly_check", REPO / "dags" / "rg_nightly_check.py")
    nightly = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(nightly)
    params = dag_params("rg_campaign")
    for name, value in nightly.NIGHTLY_CONF.items():
        params[name].resolve(value)
    assert RGParams.model_validate(nightly.NIGHTLY_CONF).site_conn_id == "local"
