"""Issue 13's storage cases through the real CLI and real SQLite: read-only commands create nothing and refuse
a database that is not a study database, side studies cannot take over user studies, passwords stay masked."""

from __future__ import annotations

import re
import sqlite3
import subprocess
import sys

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from autoprune import cli
from autoprune.config.spec import parse_spec
from autoprune.errors import SpecError
from autoprune.search.storage.study import StudyOptions, get_storage, masked, open_study, open_study_for


@pytest.mark.parametrize("url,want", [
    ("postgresql+psycopg://bob:secret@db:5432/x", "postgresql+psycopg://***@db:5432/x"),
    ("postgresql+psycopg://bob:P@W@db:5432/x", "postgresql+psycopg://***@db:5432/x"),  # a raw '@' in it
    ("sqlite:////tmp/a@b/s.db", "sqlite:////tmp/a@b/s.db"),
    # shapes that used to print the password (issue 22)
    ("postgresql+psycopg://bob:se/cr/et@db:5432/x", "postgresql+psycopg://***@db:5432/x"),
    ("postgresql+psycopg://:secret@db/x", "postgresql+psycopg://***@db/x"),
    ("postgresql+psycopg://bob@db/x?password=secret&sslmode=require",
     "postgresql+psycopg://***@db/x?password=***&sslmode=require"),
    ("postgresql+psycopg://bob:p:a:ss@db/x", "postgresql+psycopg://***@db/x"),
    ("postgresql+psycopg://bob:p?w@db/x", "postgresql+psycopg://***@db/x"),  # a raw '?' in it (issue 40)
])
def test_masked_hides_the_whole_userinfo(url, want):
    assert masked(url) == want and "secret" not in masked(url) and "W@db" not in masked(url).split("***")[0]


def test_read_only_commands_leave_a_foreign_sqlite_file_alone(tmp_path, capsys):
    other = tmp_path / "app.db"
    con = sqlite3.connect(other)
    con.execute("CREATE TABLE studies (id INTEGER)")  # another program's tables, one of them named like Optuna's
    con.execute("CREATE TABLE trials (id INTEGER)")
    con.commit()
    con.close()
    before = other.read_bytes()
    for args in (["front", "--storage", f"sqlite:///{other}"], ["report", "--storage", f"sqlite:///{other}"],
                 ["export", "--storage", f"sqlite:///{other}", "--knee", "--out", str(tmp_path / "x")]):
        assert cli.main(args) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and "is not an Optuna/autoprune study database" in err[0]
    assert other.read_bytes() == before and not (tmp_path / "x").exists()


def test_dashboard_on_a_mistyped_path_creates_nothing(tmp_path, capsys):
    missing = tmp_path / "typo" / "studies.db"
    assert cli.main(["dashboard", "--storage", f"sqlite:///{missing}", "--port", "1"]) == 2
    assert "no study database" in capsys.readouterr().err and not (tmp_path / "typo").exists()


def test_a_user_study_is_never_taken_over_as_a_side_study(tmp_path):
    url = f"sqlite:///{tmp_path}/s.db"
    store = get_storage(url)
    user = parse_spec({"name": "x-screen", "model": "m", "data": "d", "storage": url}, "s.yaml")
    open_study_for(user, store)  # a user study that happens to be named like x's side study
    with pytest.raises(SpecError, match="'x-screen' is a user study"):
        open_study(StudyOptions("x-screen", user.objectives, role="screen"), store)
    side = open_study(StudyOptions("y-screen", user.objectives, role="screen"), store)
    with pytest.raises(SpecError, match="'y-screen' is autoprune's internal screening study"):
        open_study_for(parse_spec({"name": "y-screen", "model": "m", "data": "d", "storage": url}, "s.yaml"), store)
    assert store.study_names(include_side=False) == ["x-screen"] and side.study_name in store.study_names()


def test_screened_search_refuses_a_user_study_named_like_its_side_study(tmp_path, tiny_data, tiny_model_pt, capsys):
    url = f"sqlite:///{tmp_path}/s.db"
    store = get_storage(url)
    open_study_for(parse_spec({"name": "x-screen", "model": "m", "data": "d", "storage": url}, "s.yaml"), store)
    spec = tmp_path / "x.yaml"
    spec.write_text(f"name: x\nmodel: {tiny_model_pt}\ndata: {tiny_data}\nimgsz: 64\nstorage: {url}\n")
    assert cli.main(["search", str(spec), "--studies-dir", str(tmp_path / "studies")]) == 2
    assert "screening study 'x-screen' would be the user study" in capsys.readouterr().err
    assert store.study_names() == ["x-screen"]  # nothing written: no study x, no baseline


def test_internal_side_studies_do_not_count_as_user_studies(tmp_path, capsys):
    from conftest import make_study

    study, url = make_study(tmp_path, n=8, name="demo")
    open_study(StudyOptions("demo-screen", ("map50_95", "params", "latency_ms"), role="screen"), get_storage(url))
    assert cli.main(["front", "--storage", url]) == 0  # no "pass --study NAME (2 studies ...)"
    assert "Pareto front of demo " in capsys.readouterr().out


class _Pwn:
    """A pickle payload that would create a file when unpickled (the attack a checkpoint can carry)."""

    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        import os

        return (os.system, (f"touch {self.path}",))


def _evil_checkpoint(tmp_path):
    import torch

    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pt"
    torch.save({"model": _Pwn(marker), "train_args": {}}, path)
    return path, marker


def test_a_checkpoint_that_carries_code_is_refused_unrun(tmp_path, tiny_data, capsys):
    evil, marker = _evil_checkpoint(tmp_path)
    spec = tmp_path / "s.yaml"
    spec.write_text(f"name: e\nmodel: {evil}\ndata: {tiny_data}\nimgsz: 64\n")
    assert cli.main(["search", str(spec), "--studies-dir", str(tmp_path / "studies")]) == 2
    err = capsys.readouterr().err
    assert "holds objects outside ultralytics' own classes; refused unloaded" in err and "Traceback" not in err
    assert not marker.exists() and not (tmp_path / "studies").exists()


def test_apply_checks_the_base_file_before_unpickling_it(tmp_path, tiny_model_pt, capsys):
    from autoprune.engine.identity import file_sha256
    from autoprune.model import Policy
    from autoprune.model.document import PolicyDocument, dump_policy_file

    doc = PolicyDocument(fingerprint="sha256:x", architecture="yolov8n.yaml", imgsz=64,
                         policy=Policy(ratios=(("model.0", 0.5),), criterion="l1", iterations=1, lr=0.01, ema=True,
                                       epochs=1),
                         channels={"model.0": 8}, metrics={}, baseline={}, source={}, versions={},
                         base_file_sha256=file_sha256(tiny_model_pt))
    policy = dump_policy_file(doc, tmp_path / "policy.yaml")
    evil, marker = _evil_checkpoint(tmp_path)
    assert cli.main(["apply", str(policy), "--model", str(evil), "--out", str(tmp_path / "o.pt")]) == 2
    assert "file fingerprint differs" in capsys.readouterr().err and not marker.exists()
    assert cli.main(["apply", str(policy), "--model", str(evil), "--out", str(tmp_path / "o.pt"), "--force"]) == 2
    assert "refused unloaded" in capsys.readouterr().err and not marker.exists()  # forced: still never unpickled
    assert not (tmp_path / "o.pt").exists()


def test_what_ray_persists_of_the_searcher_holds_no_storage_url(tmp_path):
    import ray.cloudpickle

    from autoprune.model import Layer
    from autoprune.search.execution.executor import StudySearcher
    from autoprune.search.run import main_job

    url = f"sqlite:///{tmp_path}/pw-secret-path.db"  # stands for postgresql://user:PASSWORD@host/db
    spec = parse_spec({"name": "t", "model": "m", "data": "d", "storage": url}, "s.yaml", studies_dir=tmp_path)
    store = get_storage(url)
    s = StudySearcher(open_study_for(spec, store), store, main_job(spec, [Layer("model.0", 16)]), n_trials=1)
    s.suggest("a")
    blob = ray.cloudpickle.dumps(s)
    assert b"pw-secret-path" not in blob and b"sqlite" not in blob


def test_studies_of_one_name_in_two_storages_keep_their_trial_files_apart(tmp_path):
    raw = {"name": "same", "model": "m.pt", "data": "d.yaml"}
    default = parse_spec(raw, "s.yaml", studies_dir=tmp_path)
    a = parse_spec({**raw, "storage": f"sqlite:///{tmp_path}/a.db"}, "s.yaml", studies_dir=tmp_path)
    b = parse_spec({**raw, "storage": f"sqlite:///{tmp_path}/b.db"}, "s.yaml", studies_dir=tmp_path)
    assert default.study_dir == (tmp_path / "same").resolve()  # the default storage keeps the plain layout
    dirs = {default.study_dir, a.study_dir, b.study_dir}
    assert len(dirs) == 3 and all(d.parent == tmp_path.resolve() for d in dirs)
    assert a.files_dir("same-screen") != b.files_dir("same-screen")  # side studies too
    assert a.study_dir == parse_spec({**raw, "storage": f"sqlite:///{tmp_path}/a.db"}, "s.yaml",
                                     studies_dir=tmp_path).study_dir  # stable


@pytest.mark.slow
def test_two_storages_one_study_name_through_the_cli(tmp_path, tiny_data, tiny_model_pt):
    import subprocess
    import sys

    import yaml

    spec = {"name": "same", "model": str(tiny_model_pt), "data": str(tiny_data), "imgsz": 64, "trials": 1,
            "screening": {"factor": 0}, "warm_start": {"uniform": 0, "from_fronts": False},
            "space": {"ratio": {"low": 0.1, "high": 0.5, "step": 0.05}, "iterations": 1, "epochs": 1},
            "finetune": {"batch": 8}, "latency": {"warmup": 0, "runs": 3, "rounds": 1}, "resources": {"cpus": 1}}
    (tmp_path / "s.yaml").write_text(yaml.safe_dump(spec))

    def run(*args):
        r = subprocess.run([sys.executable, "-m", "autoprune", *args], cwd=tmp_path, capture_output=True, text=True,
                           timeout=600)
        assert r.returncode == 0, r.stderr[-2000:]

    for db in ("a", "b"):
        run("search", "s.yaml", "--storage", f"sqlite:///{tmp_path}/{db}.db", "--seed", "1" if db == "a" else "2")
    checkpoints = sorted(tmp_path.glob("studies/same@*/trials/00000/pruned.pt"))
    assert len(checkpoints) == 2  # one per storage: the second search overwrote nothing
    persisted = [f for f in tmp_path.glob("studies/same@*/ray/**/*") if f.is_file()]
    assert persisted and not [f for f in persisted if b"sqlite:///" in f.read_bytes()]  # Ray keeps no storage URL
    run("export", "--storage", f"sqlite:///{tmp_path}/a.db", "--trial", "0", "--out", "ea", "--no-onnx")
    assert (tmp_path / "ea" / "pruned.pt").is_file()


@pytest.mark.parametrize("url,secrets", [
    ("oracle://bob:secret@db/x", ("bob", "secret")),
    ("postgresql+psycopg://bob:sec@ret:x@db:notaport/x", ("bob", "sec@ret")),
    ("postgresql+psycopg://bob@db:1/x?password=secret", ("bob", "secret")),
    # issue 40: SQLAlchemy split this at the first '@' and quoted 'pw@host:5432'
    ("postgresql+psycopg://postgres:Sup3r@Secr3t:pw@host:5432/db", ("postgres:", "Sup3r", "Secr3t", "'pw")),
])
def test_no_message_shows_any_part_of_the_userinfo(url, secrets, tmp_path):
    r = subprocess.run([sys.executable, "-m", "autoprune", "front", "--storage", url, "--study", "s"],
                       capture_output=True, text=True, cwd=tmp_path, timeout=120)
    assert r.returncode == 2 and not [s for s in secrets if s in r.stderr], r.stderr
    assert len(r.stderr.strip().splitlines()) == 1 and "Traceback" not in r.stderr
    assert r.stderr.strip().splitlines()[-1].startswith("autoprune: error: storage:")
    assert cli.EXIT_USAGE == 2


def test_scrubbed_removes_the_password_from_a_library_message():
    from autoprune.errors import scrubbed

    url = "postgresql+psycopg://bob:p@ss:w/rd@db:5432/x"
    assert "p@ss:w/rd" not in scrubbed(f"could not parse {url}: bad port in 'p@ss:w/rd@db'", url)


_USERINFO = st.text(alphabet="ABCDEFGHJKMNPQRSTUVWXYZ23456789@:/?#%", min_size=1, max_size=24)


def _pieces(userinfo: str) -> list[str]:
    return [p for p in re.split(r"[:@/?#]", userinfo) if p]


@settings(max_examples=300, deadline=None)
@given(userinfo=_USERINFO, port=st.sampled_from(["5432", "x", "", ":1", "54a"]),
       scheme=st.sampled_from(["postgresql+psycopg", "postgresql", "mysql+pymysql", "oracle"]))
def test_no_piece_of_a_malformed_userinfo_reaches_a_message(userinfo, port, scheme):
    """Property (issue 40): whatever a URL's userinfo holds, neither masked() nor a library's parse error passed
    through scrubbed() quotes a piece of it (a piece between ':', '@', '/', '?', '#'; one shorter than 4
    characters as a word of its own). The userinfo uses capitals and digits, the rest of the URL lower case."""
    import sqlalchemy

    from autoprune.errors import scrubbed

    url = f"{scheme}://{userinfo}@dbhost{':' if port else ''}{port}/db"
    try:
        sqlalchemy.engine.make_url(url).port  # noqa: B018  # the library's own parse, as the storage opens it
        message = f"could not connect to {url}"
    except Exception as e:  # SQLAlchemy's own words about the malformed URL
        message = str(e)
    for shown in (masked(url), scrubbed(message, url), scrubbed(f"{message} ({url})", url)):
        for piece in _pieces(userinfo):
            leaked = piece in shown if len(piece) >= 4 else re.search(
                rf"(?<![A-Za-z0-9]){re.escape(piece)}(?![A-Za-z0-9])", shown.replace("***", " "))
            assert not leaked, (url, shown, piece)
        assert len(userinfo) < 4 or userinfo not in shown
