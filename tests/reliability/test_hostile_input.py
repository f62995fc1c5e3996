"""Hostile input (issue 7): nothing a user types reaches a shell or the site unchecked.

Targets, each ENUMERATED FROM THE CODE so a new Param, field or flag is covered without
touching this file:

* the Params of every DAG in ``dags/`` (loaded with a DagBag), checked by both layers a real
  run goes through: Airflow's Param schema (``dags trigger``, the UI, ``dags test``) and the
  DAG's first task (``campaign.<x>.parse_params``, the pydantic models);
* every field of the RG params model (``RGParams``, also the fields that are not Params) and,
  recursively, of the FASER ``config.json`` model (``FaserConfig``);
* every value-taking flag of ``batchsite faser-align`` (argparse actions of the real parser).

Every field gets the same hostile classes: shell metacharacters (each runs ``touch CANARY``),
path traversal, the wrong kind of path (absolute where a name is expected; relative or ``~``
where an absolute site path is expected), huge values and wrong types. Each value must be
refused with an error naming the field. The values accepted on purpose are listed in
``BY_DESIGN`` with the reason, proven harmless and counted apart.

End to end, ``airflow dags test`` runs every DAG against the real SSH test site, the
connection using a fresh key whose fingerprint is counted in sshd's log. The hostile values
are picked from the enumeration (one per class, on distinct fields, in as few runs as
possible): each run fails naming its fields, no canary exists locally or on the site, and
sshd accepts the key 0 times; the last test connects once with it to prove the key works and
the count sees it.
"""

from __future__ import annotations

import copy
import inspect
import json
import math
import os
import pwd
import re
import shutil
import subprocess
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import pytest
from pydantic import BaseModel, TypeAdapter

from batchsite import cli
from batchsite.campaign import faser, rg
from batchsite.campaign.common import CampaignConfigError

from ..conftest import REPO, STATE, VENV_BIN, airflow_env, clone_airflow_home, dags_test, on_site, site_conn

CLASSES = ("shell", "traversal", "path-kind", "huge", "wrong-type")
CONN_ID = "hostile_site"

#: the validation each campaign DAG's FIRST task runs (checked against the task's source below)
VALIDATORS: dict[str, Callable[[dict], Any]] = {
    "rg_campaign": rg.parse_params,
    "faser_alignment": faser.parse_params,
}
PARAM_MODELS: dict[str, type[BaseModel]] = {"rg_campaign": rg.RGParams, "faser_alignment": faser.FaserParams}
#: object-typed fields whose content is a model / has known keys (so their insides are attacked too)
OBJECT_MODELS: dict[str, type[BaseModel]] = {"config": faser.FaserConfig}
OBJECT_KEYS: dict[str, list[str]] = {"commands": sorted(rg.DEFAULT_COMMANDS)}

#: a config.json with every field set to something valid (the group chain and EOS output on),
#: so each hostile leaf is judged alone, not by a cross-field rule
BENIGN_FASER_CONFIG = {
    "paths": {"src_dir": "/srv/faser/faser-alignment-script", "calypso_asetup": "/srv/faser/calypso/asetup.faser",
              "calypso_setup": "/srv/faser/calypso/install/setup.sh", "env_pede": "/srv/faser/pede",
              "env_root": "/srv/faser/root/bin/thisroot.sh", "initial_constants": "/srv/faser/align_2022_3ST.txt",
              "calypso_install": "/srv/faser/calypso/install", "pede_install": "/srv/faser/pede",
              "work_dir": "/srv/faser/work", "eos_output_dir": "/eos/user/f/faser/out"},
    "htcondor": {"job_flavour": "longlunch", "request_cpus": 1, "request_memory_mb": 2000, "max_retries": 3,
                 "requirements": '(OpSysAndVer =?= "AlmaLinux9")', "spool": False, "maxidle": 100},
    "alignment": {"default_iterations": 10, "polling_interval_seconds": 300, "tracks_per_file": 2000},
    "storage": {"use_eos_for_output": True, "keep_intermediate_root_files": True, "cleanup_reco_temp_files": True},
}
#: per DAG, a valid run that would reach the site (RG EXP stages and reads the FP histograms;
#: FASER with the calypso paths checks them over SSH in its first task)
BASELINE_OVERRIDES = {
    "rg_campaign": {"type": "EXP", "shifts": [0.1], "fp_version": "v0", "samples": 1000, "batches": 4,
                    "throttle": 2, "steps": 2},
    "faser_alignment": {"config": BENIGN_FASER_CONFIG, "files": "400-402", "iterations": 2},
}

#: values accepted on purpose: (field, class) -> why that is harmless. A value listed here must
#: still pass the field's proof in PROOFS (if any); everything else must be refused.
BY_DESIGN = {
    ("htcondor.requirements", "shell"):
        "a ClassAd expression: '&&' and '|' are ClassAd operators, and 'v1 && touch /a /b' parses as one "
        "(attributes divided). It is written as ONE 'requirements = ...' line of the submit file and "
        "evaluated by HTCondor, never by a shell (PROOFS renders the round and checks exactly that)",
    ("--out", "traversal"):
        "--out is the user's own LOCAL output directory: resolved with abspath (so '..' is fine); the rendered "
        "files land only there (the test checks nothing appears next to its root) and nothing is run",
    ("--out", "path-kind"):
        "--out may be relative (resolved against the current directory); nothing is run",
}
#: values Airflow's Param schema refuses but the first task accepts on purpose
TASK_LENIENT = {
    ("faser_alignment", "run", "wrong-type"):
        "an integer run number is zero-padded on purpose (dag_manager.py's -r 11705); Airflow refuses it first",
}


# ============================================================================ canaries, values

@dataclass
class Canary:
    local: Path
    site: str | None = None

    @property
    def cmd(self) -> str:
        return " ".join(["touch", str(self.local), *([self.site] if self.site else [])])

    def found(self) -> list[str]:
        return [p for p in (str(self.local), self.site) if p and os.path.lexists(p)]


@dataclass
class Case:
    target: str
    path: tuple          # where the value goes: ("fp_version",), ("config", "paths", "work_dir"), ("--out",)
    cls: str
    value: Any           # the value put at ``path`` (whole container for wrapped values)
    label: str = ""
    alt_names: tuple = ()  # other names that count as naming the field (a CLI flag's param, ...)
    airflow_err: str | None = None
    task_err: str | None = None
    crash: str | None = None

    @property
    def name(self) -> str:
        """The name the error must mention: the field, or the dotted key inside a model-backed object."""
        if len(self.path) > 1 and (self.path[0] in OBJECT_MODELS or self.path[0] == "--config"):
            return ".".join(self.path[1:])
        return ".".join(self.path)

    @property
    def rejected(self) -> bool:
        return bool(self.airflow_err or self.task_err)


def short(v: Any, n: int = 48) -> str:
    r = repr(v)
    return r if len(r) <= n else f"{r[:n]}...({len(r)} chars)"


def names_field(msg: str | None, name: str) -> bool:
    return bool(msg) and re.search(rf"(?<![\w.]){re.escape(name)}(?=[.:=\[ (]|$)", msg) is not None


def json_types(schema: dict) -> tuple[set[str], list | None]:
    """The JSON types a schema accepts, and its enum (if any)."""
    if "enum" in schema:
        return {_jtype(x) for x in schema["enum"]}, list(schema["enum"])
    t = schema.get("type")
    types = {t} if isinstance(t, str) else set(t or ())
    enum = None
    for sub in schema.get("anyOf", []) + schema.get("oneOf", []):
        st, se = json_types(sub)
        types |= st
        enum = se if se is not None else enum
    if "number" in types:
        types.add("integer")
    return types, enum


def member(schema: dict, kind: str) -> dict | None:
    """The sub-schema of type ``kind`` (array / object) of a schema, unions included."""
    t = schema.get("type")
    if t == kind or (isinstance(t, list) and kind in t):
        return schema
    for sub in schema.get("anyOf", []) + schema.get("oneOf", []):
        m = member(sub, kind)
        if m is not None:
            return m
    return None


def _jtype(x: Any) -> str:
    if x is None:
        return "null"
    if isinstance(x, bool):
        return "boolean"
    if isinstance(x, int):
        return "integer"
    if isinstance(x, float):
        return "number"
    if isinstance(x, str):
        return "string"
    return "array" if isinstance(x, list) else "object"


def scalar_hostiles(c: Canary, schema: dict, *, takes_abs: bool, benign_abs: str) -> list[tuple[str, Any]]:
    """Every hostile class for one field with JSON schema ``schema``."""
    t = c.cmd
    types, enum = json_types(schema)
    shell = [f"400-450; {t}", f"$({t})", f"`{t}`", f"v1\n{t}", "v1\n", f"v1 && {t}", f"v1 | {t}", f"v1'; {t}; '",
             f'v1"; {t}; "', f"/tmp/x;{t}", f"/tmp/$({t})", f"/tmp/`{t}`", f"/tmp/x\n{t}", f"-oProxyCommand={t}",
             "v1\x00"]
    traversal = ["../../etc", "x/../../../etc/passwd", "..",
                 f"{benign_abs}/../../../etc" if takes_abs else "v1/../../etc"]
    path_kind = (["etc/passwd", "~/x", "./x", "~root/.ssh"] if takes_abs
                 else ["/etc", "/etc/passwd", "/root/.ssh", str(c.local)])
    huge = ["a" * 100_000, "4" * 100_000, "/" + "a/" * 50_000, 10**12, -(10**12), 2**64, 1e308, -1e308,
            math.inf, math.nan]
    # huge containers where a container is expected (elsewhere [1] and {"a": 1} are wrong types already)
    huge += [[1] * 100_000] if "array" in types else []
    huge += [{f"k{i}": 1 for i in range(10_000)}] if "object" in types else []
    wrong = [None, True, [1], {"a": 1}, "1", 1, 1.5]
    if enum is not None:
        wrong = [w for w in wrong if not any(w == e and type(w) is type(e) for e in enum)]
    else:
        drop = {"null": (type(None),), "boolean": (bool,), "array": (list,), "object": (dict,), "string": (str,),
                "integer": (int,), "number": (float,)}
        wrong = [w for w in wrong
                 if not any(isinstance(w, drop[k]) and not (k == "integer" and isinstance(w, bool)) for k in types)]
    out = [("shell", v) for v in shell] + [("traversal", v) for v in traversal] + \
          [("path-kind", v) for v in path_kind] + [("huge", v) for v in huge] + [("wrong-type", v) for v in wrong]
    # a nullable or boolean field legitimately takes None / True: those are not hostile
    if "null" in types:
        out = [(k, v) for k, v in out if v is not None]
    return out


def hostiles(c: Canary, key: str, schema: dict, *, takes_abs: bool, benign_abs: str,
             inner: dict | None = None) -> list[tuple[str, Any]]:
    """``scalar_hostiles`` plus the same values INSIDE the field when it is an array / object
    (``inner``: a schema that says what is inside, when ``schema`` does not)."""
    out = scalar_hostiles(c, schema, takes_abs=takes_abs, benign_abs=benign_abs)
    schema = inner or schema
    arr = member(schema, "array")
    if arr is not None:
        items = arr.get("items", {})
        out += [(k, [v]) for k, v in hostiles(c, "", items, takes_abs=False, benign_abs=benign_abs)
                if not (k == "huge" and isinstance(v, (list, dict)))]
    obj = member(schema, "object")
    if obj is not None and key in OBJECT_KEYS:
        inner = obj.get("additionalProperties") or {}
        k0 = OBJECT_KEYS[key][0]
        out += [(k, {k0: v}) for k, v in hostiles(c, "", inner, takes_abs=False, benign_abs=benign_abs)
                if not (k == "huge" and isinstance(v, dict))]
        out += [("shell", {f"$({c.cmd})": ["x"]}), ("traversal", {"../../etc": ["x"]})]
    return out


def set_path(base: dict, path: tuple, value: Any) -> dict:
    out = copy.deepcopy(base)
    d = out
    for k in path[:-1]:
        d = d.setdefault(k, {})
    d[path[-1]] = value
    return out


def model_leaves(model: type[BaseModel], prefix: tuple = ()) -> list[tuple[tuple, dict]]:
    """(path, JSON schema) of every leaf field of a pydantic model, nested models recursed."""
    out = []
    for name, f in model.model_fields.items():
        ann = f.annotation
        if isinstance(ann, type) and issubclass(ann, BaseModel):
            out += model_leaves(ann, (*prefix, name))
        else:
            out.append(((*prefix, name), TypeAdapter(ann).json_schema()))
    return out


def judge_task(case: Case, validate: Callable[[dict], Any], conf: dict) -> None:
    try:
        validate(conf)
    except CampaignConfigError as e:
        case.task_err = str(e)
    except Exception as e:  # anything else is not a clear refusal
        case.crash = f"{type(e).__name__}: {e}"[:300]


# ============================================================================ proofs of harmlessness

def requirements_only_in_the_submit_file(c: Case) -> str | None:
    """``htcondor.requirements`` accepted: render iteration 1 for HTCondor as the DAG would and
    check the value is one ``requirements`` line of the submit files, parsed by HTCondor as that
    expression, and in no shell script."""
    import tempfile

    import htcondor2

    value = c.value
    config = set_path(BENIGN_FASER_CONFIG, ("htcondor", "requirements"), value)
    conf = faser.parse_params({"files": "400-402", "config": config}).model_dump(mode="json")
    with tempfile.TemporaryDirectory() as out:
        r = cli.render_first_round(conf, scheduler="htcondor", out=out)
    subs = {n: t for n, t in r["files"].items() if n.endswith(".sub")}
    if not subs:
        return "no submit file rendered"
    if "unit.sub" not in subs:
        return f"no unit.sub among the submit files {sorted(subs)}"
    # the htcondor.* keys set the reconstruction job's submit settings (unit.sub); the group's
    # Millepede job (fanin.sub) has its own contract, without requirements
    for name, text in r["files"].items():
        if name == "unit.sub":
            lines = [ln for ln in text.splitlines() if ln.split("=")[0].strip().lower() == "requirements"]
            if len(lines) != 1:
                return f"{name}: {len(lines)} requirements lines"
            got = htcondor2.Submit(text)["requirements"]
            if got != value:
                return f"{name}: HTCondor reads requirements as {got!r}"
        elif value in text:
            return f"the value appears in {name}, which is not the reconstruction job's submit file"
    return None


PROOFS: dict[str, Callable[[Case], str | None]] = {"htcondor.requirements": requirements_only_in_the_submit_file}


# ============================================================================ bookkeeping

def refusal_excerpt(c: Case, n: int = 100) -> str:
    """The refusal, from where it names the field (the last line that does: argparse puts its
    usage first and the error last)."""
    for msg in (c.task_err, c.airflow_err):
        for line in reversed((msg or "").splitlines()):
            for name in (c.name, *c.alt_names):
                m = re.search(rf"(?<![\w.]){re.escape(name)}(?=[.:=\[ (]|$)", line)
                if m:
                    text = line[m.start():]
                    return text if len(text) <= n else text[:n] + "..."
    return (c.task_err or c.airflow_err or "")[:n]


@dataclass
class Tally:
    target: str
    cases: list[Case] = field(default_factory=list)
    accepted_by_design: list[Case] = field(default_factory=list)

    def check(self, *, by_design: dict | None = None) -> list[str]:
        """Problems: values not refused (and not by design), refusals not naming the field, crashes."""
        by_design = BY_DESIGN if by_design is None else by_design
        problems = []
        for c in self.cases:
            head = f"{self.target}: {c.name} = {short(c.value)} ({c.cls})"
            if c.crash:
                problems.append(f"{head}: crashed instead of a clear refusal: {c.crash}")
            elif not c.rejected:
                if (c.name, c.cls) in by_design:
                    why_not = PROOFS[c.name](c) if c.name in PROOFS else None
                    if why_not:
                        problems.append(f"{head}: accepted by design but NOT harmless: {why_not}")
                    self.accepted_by_design.append(c)
                else:
                    problems.append(f"{head}: ACCEPTED")
            else:
                for layer, msg in (("Airflow", c.airflow_err), ("first task", c.task_err)):
                    if msg and not any(names_field(msg, n) for n in (c.name, *c.alt_names)):
                        problems.append(f"{head}: {layer} refusal does not name {c.name!r}: {msg[:200]}")
        return problems

    def record(self, row, *, executed: int, remote: int | None) -> None:
        row.tried = len(self.cases)
        row.rejected = sum(c.rejected for c in self.cases)
        row.executed = executed
        row.remote_commands = remote
        ex, used = [], set()
        plain = ("Input should be", "is not one of", "is not of type", "invalid int", "invalid float", "invalid choice")
        for cls in CLASSES:  # one refusal per class, on different fields, quoted from where it names the field
            pool = [c for c in self.cases if c.cls == cls and c.rejected]
            # rather a refusal by a rule of ours than a plain type error, when there is one
            pool.sort(key=lambda c: any(t in refusal_excerpt(c) for t in plain))
            c = next((c for c in pool if c.name not in used and c.label == "e2e"), None) or \
                next((c for c in pool if c.name not in used), None) or next(iter(pool), None)
            if c:
                used.add(c.name)
                ex.append(f"{cls}: {c.name}={short(c.value, 40)}{' (dags test)' if c.label == 'e2e' else ''} -> "
                          f"{refusal_excerpt(c)}")
        if self.accepted_by_design:
            names = sorted({c.name for c in self.accepted_by_design})
            ex.append(f"accepted by design (harmless, see BY_DESIGN): {len(self.accepted_by_design)} "
                      f"value(s) of {', '.join(names)}")
        row.examples = ex


# ============================================================================ fixtures

@pytest.fixture(scope="module")
def work(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("hostile")
    pkg = d / "pkg"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    return d


@pytest.fixture(scope="module")
def benign_abs(work) -> str:
    """An absolute path that exists and is a package (so code_dir accepts it)."""
    return str(work / "pkg")


class SshKey:
    """A fresh ed25519 key in the site user's authorized_keys, and sshd's count of logins with it."""

    def __init__(self, d: Path, site_info: dict):
        self.path = d / "id_hostile"
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", f"batchsite-hostile-{uuid.uuid4().hex}",
                        "-f", str(self.path)], check=True)
        self.pub = self.path.with_suffix(".pub").read_text().strip()
        self.fingerprint = subprocess.run(["ssh-keygen", "-lf", str(self.path.with_suffix(".pub"))], check=True,
                                          capture_output=True, text=True).stdout.split()[1]
        assert self.fingerprint.startswith("SHA256:")
        home = pwd.getpwnam(site_info["user"]).pw_dir
        self.authorized_keys = Path(home) / ".ssh" / "authorized_keys"
        self.log = STATE / "log" / "sshd.log"

    def install(self) -> None:
        with open(self.authorized_keys, "a") as f:  # append: keeps owner and mode, other lines untouched
            f.write(self.pub + "\n")

    def remove(self) -> None:
        st = self.authorized_keys.stat()
        lines = self.authorized_keys.read_text().splitlines(keepends=True)
        keep = [ln for ln in lines if ln.strip() != self.pub]
        tmp = self.authorized_keys.with_name(f".authorized_keys.{uuid.uuid4().hex}")
        tmp.write_text("".join(keep))
        os.chown(tmp, st.st_uid, st.st_gid)
        os.chmod(tmp, st.st_mode & 0o777)
        os.replace(tmp, self.authorized_keys)

    def logins(self) -> int:
        """Lines of sshd's log with this key's fingerprint (Accepted publickey ... SHA256:...)."""
        try:
            text = self.log.read_text(errors="replace")
        except FileNotFoundError:
            return 0
        return sum(1 for ln in text.splitlines() if self.fingerprint in ln)

    def accepted(self) -> int:
        try:
            text = self.log.read_text(errors="replace")
        except FileNotFoundError:
            return 0
        return sum(1 for ln in text.splitlines() if self.fingerprint in ln and "Accepted publickey" in ln)


@pytest.fixture(scope="module")
def hostile_key(site_info, tmp_path_factory):
    key = SshKey(tmp_path_factory.mktemp("hostile_key"), site_info)
    assert key.logins() == 0
    key.install()
    try:
        yield key
    finally:
        key.remove()
        assert key.pub not in key.authorized_keys.read_text()


@pytest.fixture(scope="module")
def hostile_conn(site_info, hostile_key) -> dict:
    """The test site's connection, authenticating with the counted key."""
    return site_conn(site_info, "slurm", key_file=str(hostile_key.path))


@pytest.fixture(scope="module")
def conn_env(hostile_conn):
    """AIRFLOW_CONN_HOSTILE_SITE in this process: in-process code that reached for the site would use the key."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv(f"AIRFLOW_CONN_{CONN_ID.upper()}", json.dumps(hostile_conn))
        yield


def canary_name() -> str:
    """``canary-<uuid>``; the uuid starts with a letter, so the values that embed it are the same
    kind of text on every run (``canary-0abc`` and ``canary-abc`` lex differently as ClassAds)."""
    while True:
        h = uuid.uuid4().hex
        if h[0].isalpha():
            return f"canary-{h}"


@pytest.fixture(scope="module")
def canary(work, site_info) -> Canary:
    return Canary(work / canary_name(), f"{site_info['remote_root']}/{canary_name()}")


@pytest.fixture(scope="module")
def campaign_dags(airflow_home) -> dict:
    """Every DAG in dags/ that takes Params (what a user types), parsed by Airflow's own DagBag.
    The others (the downstream Asset consumer, the nightly trigger with its fixed conf) take
    none: nothing typed reaches them."""
    env = airflow_env(airflow_home)
    with pytest.MonkeyPatch.context() as mp:
        for k in ("AIRFLOW_HOME", "AIRFLOW__CORE__DAGS_FOLDER", "AIRFLOW__CORE__LOAD_EXAMPLES"):
            mp.setenv(k, env[k])
        from airflow.dag_processing.dagbag import DagBag

        bag = DagBag(dag_folder=str(REPO / "dags"))
    assert not bag.import_errors, bag.import_errors
    assert bag.dags, "no DAG found in dags/"
    return {dag_id: dag for dag_id, dag in bag.dags.items() if dag.params}


def count_canaries(canaries: list[Canary], site_info: dict | None = None) -> int:
    """Canary files that exist: locally, and on the site (asked over SSH with the site's own key)."""
    found = [p for c in canaries for p in c.found()]
    if site_info is not None:
        sites = " ".join(c.site for c in canaries if c.site)
        for _ in range(4):  # the shared site may be in a fault-injection window
            r = on_site(site_info, f"for f in {sites}; do [ -e \"$f\" ] && echo \"$f\"; done; echo checked")
            if r.returncode == 0 and r.stdout.strip().endswith("checked"):
                break
            time.sleep(10)
        else:
            pytest.fail(f"could not look for the canary on the site: {r.stderr[-500:]}")
        found += r.stdout.split()[:-1]
    return len(set(found))


# ============================================================================ Params of the DAGs

def enumerate_params(dag, dag_id: str, c: Canary, benign_abs: str) -> tuple[dict, list[Case]]:
    """The DAG's valid baseline conf and one Case per (Param or object leaf, hostile value)."""
    validate = VALIDATORS[dag_id]
    baseline = {k: copy.deepcopy(dag.params[k]) for k in dag.params}
    baseline.update(copy.deepcopy(BASELINE_OVERRIDES.get(dag_id, {})))
    baseline["site_conn_id"] = CONN_ID
    validate(baseline)  # the baseline itself is valid for the first task
    for k, v in baseline.items():  # and for Airflow's schema
        dag.params.get_param(k).resolve(value=v)
    target = f"{dag_id} Params"

    def accepts(path: tuple, value: Any) -> bool:
        conf = set_path(baseline, path, value)
        try:
            dag.params.get_param(path[0]).resolve(value=conf[path[0]])
            validate(conf)
        except Exception:
            return False
        return True

    fields = PARAM_MODELS[dag_id].model_fields
    cases = []
    for name in dag.params:
        schema = dag.params.get_param(name).schema
        takes_abs = accepts((name,), benign_abs)
        # what is inside an array / object Param: the model's field says it when the Param does not
        inner = TypeAdapter(fields[name].annotation).json_schema() if name in fields else None
        for cls, v in hostiles(c, name, schema, takes_abs=takes_abs, benign_abs=benign_abs, inner=inner):
            cases.append(Case(target, (name,), cls, v))
        model = OBJECT_MODELS.get(name)
        if model is not None:  # the object is a model (config.json): attack every leaf inside it
            for leaf, lschema in model_leaves(model):
                path = (name, *leaf)
                leaf_abs = accepts(path, benign_abs)
                for cls, v in hostiles(c, leaf[-1], lschema, takes_abs=leaf_abs, benign_abs=benign_abs):
                    cases.append(Case(target, path, cls, v))
    from airflow.sdk.exceptions import ParamValidationError

    params = copy.deepcopy(dag.params)
    for case in cases:
        conf = set_path(baseline, case.path, case.value)
        try:  # what a triggered run does with its conf: ParamsDict validates each Param against its schema
            params[case.path[0]] = conf[case.path[0]]
        except ParamValidationError as e:
            case.airflow_err = f"ParamValidationError: {e}"
        except Exception as e:  # noqa: BLE001
            case.crash = f"Airflow: {type(e).__name__}: {e}"[:300]
        judge_task(case, validate, conf)
    return baseline, cases


def pick_e2e(cases: list[Case]) -> list[list[Case]]:
    """Runs for ``airflow dags test``: every class at least once, in as few runs as possible.

    The first task reports every bad field at once, so run 1 carries one value per class on
    distinct fields among the values Airflow's schema lets through (a maximum matching of
    classes to fields). Airflow's schema stops at the first bad Param, so each class left
    over gets a run of its own with a value Airflow refuses.
    """
    def ok(c: Case) -> bool:
        if isinstance(c.value, (str, list, dict)) and len(c.value) > 1000:
            return False  # a 100 kB value on the command line of `airflow dags test`: kept in-process
        try:
            json.dumps(c.value, allow_nan=False)
        except ValueError:
            return False
        return c.path[0] != "site_conn_id"  # the run must point at the real site

    def rank(c: Case) -> tuple:  # prefer values that would run the canary command, then short ones
        text = json.dumps(c.value)
        return "touch" not in text, "etc" not in text, len(text)

    # a shell value sent end to end must carry the canary command
    through = {cls: sorted((c for c in cases if c.cls == cls and ok(c) and c.task_err and not c.airflow_err
                            and (cls != "shell" or "touch" in json.dumps(c.value))), key=rank) for cls in CLASSES}
    best: dict[str, Case] = {}

    # most classes in the first run; among those, one with the shell (canary) value in it
    def score(chosen: dict) -> tuple:
        return len(chosen), "shell" in chosen

    def search(i: int, order: list[str], used: set, chosen: dict) -> None:
        nonlocal best
        if best and (len(chosen) + len(order) - i, "shell" in chosen or "shell" in order[i:]) <= score(best):
            return
        if i == len(order):
            best = dict(chosen)
            return
        cls = order[i]
        seen = set()
        for c in through[cls]:  # best-ranked value per field only
            if c.path in used or c.path in seen:
                continue
            seen.add(c.path)
            search(i + 1, order, used | {c.path}, {**chosen, cls: c})
        search(i + 1, order, used, chosen)

    search(0, sorted(CLASSES, key=lambda k: len(through[k])), set(), {})
    runs = [list(best.values())] if best else []
    for cls in CLASSES:
        if cls not in best:
            refused = sorted((c for c in cases if c.cls == cls and ok(c) and c.airflow_err), key=rank)
            assert refused, f"no {cls} value can be sent end to end"
            runs.append([refused[0]])
    return runs


def run_dags_test(home: Path, idx: int, dag_id: str, conf: dict, conn: dict, timeout: int = 300
                  ) -> subprocess.CompletedProcess:
    """``airflow dags test`` on a private copy of the migrated Airflow DB, so several runs can go
    at once."""
    mine = clone_airflow_home(home, home.parent / f"{home.name}-hostile-{idx}-{uuid.uuid4().hex[:6]}")
    try:
        return dags_test(mine, dag_id, conf, timeout=timeout, **{CONN_ID: conn})
    finally:
        shutil.rmtree(mine, ignore_errors=True)


def refusal_lines(out: str) -> list[str]:
    return [ln for ln in out.splitlines() if "CampaignConfigError:" in ln or "ParamValidationError:" in ln]


def test_dag_params_are_refused_before_anything_remote(campaign_dags, work, benign_abs, canary, site_info,
                                                     airflow_home, hostile_key, hostile_conn, conn_env,
                                                     hostile_record):
    t0 = time.monotonic()
    assert set(campaign_dags) == set(VALIDATORS), \
        f"DAGs in dags/ {sorted(campaign_dags)} vs validators known here {sorted(VALIDATORS)}: add the new DAG's " \
        "first-task validation to VALIDATORS"
    tallies, e2e = {}, []
    for dag_id, dag in sorted(campaign_dags.items()):
        # the validation judged here is the one the DAG's first task really runs
        (first,) = [t for t in dag.roots]
        src = inspect.getsource(first.python_callable)
        assert "parse_params(_params())" in src and VALIDATORS[dag_id].__module__ in src, (dag_id, src[:400])
        baseline, cases = enumerate_params(dag, dag_id, canary, benign_abs)
        tally = Tally(f"{dag_id} Params", cases)
        tallies[dag_id] = tally
        lenient = [c for c in cases if not c.task_err and not c.crash and c.rejected
                   and (dag_id, c.name, c.cls) not in TASK_LENIENT]
        assert not lenient, f"{dag_id}: Airflow's schema refuses these but the first task accepts them:\n" + \
            "\n".join(f"  {c.name} = {short(c.value)} ({c.cls})" for c in lenient[:20])
        for run in pick_e2e(cases):
            conf = baseline
            for c in run:
                conf = set_path(conf, c.path, c.value)
            e2e.append((dag_id, run, conf))
    assert len(e2e) <= 6, [(d, [c.cls for c in r]) for d, r, _ in e2e]

    # end to end, all runs at once (each on its own copy of the Airflow DB)
    before = hostile_key.logins()
    with ThreadPoolExecutor(len(e2e)) as pool:
        results = list(pool.map(lambda a: run_dags_test(airflow_home, a[0], a[1][0], a[1][2], hostile_conn),
                                enumerate(e2e)))
    problems = []
    for (dag_id, run, conf), r in zip(e2e, results):
        out = r.stdout + r.stderr
        refusals = refusal_lines(out)
        tag = f"dags test {dag_id} [{', '.join(f'{c.cls}:{c.name}' for c in run)}]"
        if r.returncode == 0 or "state=success" in out or not refusals:
            problems.append(f"{tag}: did not fail with a refusal (rc {r.returncode}):\n{out[-3000:]}")
            continue
        for c in run:
            if not any(names_field(ln, c.name) for ln in refusals):
                problems.append(f"{tag}: the refusal does not name {c.name}: {refusals}")
        tallies[dag_id].cases += [Case(c.target, c.path, c.cls, c.value, label="e2e",
                                       task_err=next((ln for ln in refusals if "CampaignConfigError" in ln), None),
                                       airflow_err=next((ln for ln in refusals if "ParamValidation" in ln), None))
                                  for c in run]
    executed = count_canaries([canary], site_info)
    remote = hostile_key.logins() - before
    for dag_id, tally in sorted(tallies.items()):
        problems += tally.check()
        tally.record(hostile_record(tally.target), executed=executed, remote=hostile_key.logins())
    assert not problems, f"{len(problems)} problem(s):\n" + "\n".join(problems[:40])
    assert executed == 0, "a hostile value was EXECUTED: the canary exists"
    assert remote == 0 and hostile_key.logins() == 0, \
        f"sshd accepted the test key {hostile_key.logins()} time(s) while hostile input was validated"
    print(f"\nDAG Params: {sum(len(t.cases) for t in tallies.values())} values, {len(e2e)} dags test runs, "
          f"{time.monotonic() - t0:.1f} s")


# ============================================================================ the models

def enumerate_model(target: str, model: type[BaseModel], baseline: dict, validate: Callable[[dict], Any],
                    c: Canary, benign_abs: str) -> list[Case]:
    validate(baseline)

    def accepts(path: tuple, value: Any) -> bool:
        try:
            validate(set_path(baseline, path, value))
        except Exception:
            return False
        return True

    cases = []
    for path, schema in model_leaves(model):
        takes_abs = accepts(path, benign_abs)
        for cls, v in hostiles(c, path[-1], schema, takes_abs=takes_abs, benign_abs=benign_abs):
            case = Case(target, path, cls, v)
            judge_task(case, validate, set_path(baseline, path, v))
            cases.append(case)
    return cases


@pytest.mark.parametrize("target", ["RG config", "FASER config.json"])
def test_every_model_field_refuses_hostile_values(target, work, benign_abs, hostile_key, conn_env, hostile_record):
    c = Canary(work / canary_name())
    before = hostile_key.logins()
    if target == "RG config":
        base = {**BASELINE_OVERRIDES["rg_campaign"], "site_conn_id": CONN_ID}
        cases = enumerate_model(target, rg.RGParams, base, rg.parse_params, c, benign_abs)
        assert {p[0] for p in (k.path for k in cases)} == set(rg.RGParams.model_fields)
    else:
        cases = enumerate_model(target, faser.FaserConfig, BENIGN_FASER_CONFIG, faser.parse_config, c, benign_abs)
        leaves = {p for p, _ in model_leaves(faser.FaserConfig)}
        assert {k.path for k in cases} == leaves and len(leaves) >= 15
    tally = Tally(target, cases)
    problems = tally.check()
    executed = len(c.found())
    tally.record(hostile_record(target), executed=executed, remote=hostile_key.logins() - before)
    assert not problems, f"{len(problems)} problem(s):\n" + "\n".join(problems[:40])
    assert executed == 0 and hostile_key.logins() == before == 0


# ============================================================================ the CLI

def faser_align_flags() -> list:
    """The value-taking flags of ``batchsite faser-align``, from the real parser."""
    import argparse

    ap = cli.build_parser()
    (sub,) = [a for a in ap._actions if isinstance(a, argparse._SubParsersAction)]
    return [a for a in sub.choices["faser-align"]._actions if a.option_strings and a.nargs != 0]


def test_faser_align_flags_refuse_hostile_values(work, hostile_key, conn_env, hostile_record, capsys, monkeypatch):
    target = "batchsite faser-align flags"
    c = Canary(work / canary_name())
    before = hostile_key.logins()
    before_work = [p.name for p in work.iterdir()]
    root = work / "cli"
    deep = root / "a" / "b" / "c" / "d" / "e"  # cwd: relative and '..' values of --out stay inside root
    deep.mkdir(parents=True)
    monkeypatch.chdir(deep)
    out_dir = deep / "out"
    base = {"--year": "2023", "--run": "011705", "--files": "400-402", "--site": CONN_ID, "--out": str(out_dir)}

    def run(argv: list[str]) -> tuple[int, str]:
        try:
            rc = cli.main(argv)
        except SystemExit as e:  # argparse refusals
            rc = e.code
        return rc, capsys.readouterr().err

    rc, err = run(["faser-align", *[f"{k}={v}" for k, v in base.items()]])
    assert rc == 0, err
    cases = []
    flags = faser_align_flags()
    assert {"--year", "--run", "--files", "--config", "--site", "--out", "--tolerance"} <= \
        {max(a.option_strings, key=len) for a in flags}
    for action in flags:
        flag = max(action.option_strings, key=len)
        schema = {int: {"type": "integer"}, float: {"type": "number"}}.get(action.type, {"type": "string"})
        if action.choices:
            schema = {"enum": list(action.choices)}
        probe = {**base, flag: str(deep / "probe")}
        takes_abs = run(["faser-align", *[f"{k}={v}" for k, v in probe.items()]])[0] == 0
        for cls, v in scalar_hostiles(c, schema, takes_abs=takes_abs, benign_abs=str(deep / "probe")):
            text = v if isinstance(v, str) else json.dumps(v, allow_nan=True) if not isinstance(v, float) else repr(v)
            if not isinstance(v, str) and action.type is None and not action.choices:
                continue  # argv has no types: for a string flag, 1 or 10**12 is just a short string
            if cls == "wrong-type" and action.type is not None:
                try:
                    action.type(text)
                    continue  # '1' is a valid --iterations: not a wrong type once it is argv text
                except ValueError:
                    pass
            if "\x00" in text:
                continue  # a NUL cannot be passed in argv at all
            # the error names the flag (argparse: '-y/--year') or the param and its flag ('files (-f)')
            case = Case(target, (flag,), cls, text,
                        alt_names=(*action.option_strings, "site_conn_id" if action.dest == "site" else action.dest))
            rc, err = run(["faser-align", *[f"{k}={val}" for k, val in {**base, flag: text}.items()]])
            if rc == 2:
                case.task_err = err
            elif rc != 0:
                case.crash = f"exit {rc}: {err[-300:]}"
            cases.append(case)
    # a config.json with a shell value in each field, through --config
    for path, schema in model_leaves(faser.FaserConfig):
        for cls, v in scalar_hostiles(c, schema, takes_abs=False, benign_abs="/x")[:4]:
            f = root / f"config-{uuid.uuid4().hex[:8]}.json"
            f.write_text(json.dumps(set_path(BENIGN_FASER_CONFIG, path, v)))
            case = Case(target, ("--config", *path), cls, v, alt_names=(".".join(path),))
            rc, err = run(["faser-align", *[f"{k}={val}" for k, val in {**base, "--config": str(f)}.items()]])
            if rc == 2:
                case.task_err = err
            elif rc != 0:
                case.crash = f"exit {rc}: {err[-300:]}"
            cases.append(case)
    tally = Tally(target, cases)
    problems = tally.check()
    # what was accepted by design wrote only inside root (the resolved --out), nothing next to it
    assert sorted(p.name for p in work.iterdir()) == sorted([*before_work, "cli"])

    # the real console script, once: a shell value in -f is refused before anything happens
    r = subprocess.run([str(VENV_BIN / "batchsite"), "faser-align", "-y", "2023", "-r", "11705",
                        f"--files=400-450; {c.cmd}", "--out", str(out_dir)], capture_output=True, text=True,
                       timeout=120)
    assert r.returncode == 2 and "files (-f)" in r.stderr, (r.returncode, r.stderr)
    executed = len(c.found())
    tally.record(hostile_record(target), executed=executed, remote=hostile_key.logins() - before)
    assert not problems, f"{len(problems)} problem(s):\n" + "\n".join(problems[:40])
    assert executed == 0 and hostile_key.logins() == before == 0


# ============================================================================ the control

def test_zz_the_counted_key_works_and_sshd_logs_it(hostile_key, conn_env):
    """The zero above means something: the same connection (same key) reaches the site, and
    sshd's log then holds an accepted login with the key's fingerprint."""
    from batchsite.hooks.site import site_from_conn_id

    assert hostile_key.accepted() == 0
    last = None
    for _ in range(4):  # the shared site may be in a fault-injection window
        try:
            site = site_from_conn_id(CONN_ID)
            try:
                r = site.transport.sh("echo hostile-control")
            finally:
                site.close()
            if r.returncode == 0 and "hostile-control" in r.out:
                break
            last = r
        except Exception as e:  # noqa: BLE001 - connection errors while sshd is being restarted
            last = e
        time.sleep(10)
    else:
        pytest.fail(f"the control connection with the test key failed: {last}")
    deadline = time.monotonic() + 10
    while hostile_key.accepted() < 1 and time.monotonic() < deadline:
        time.sleep(0.2)
    assert hostile_key.accepted() >= 1
