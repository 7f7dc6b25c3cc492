"""optuna-dashboard and the plotly report, opened in a real headless Chromium.

The studies are real SQLite studies with made-up trial results (see conftest.make_study).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import threading
import urllib.request
from pathlib import Path
from wsgiref.simple_server import WSGIRequestHandler, make_server

import pytest

from conftest import make_study

CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync"]


@pytest.fixture(scope="module")
def chromium():
    exe = shutil.which("chromium") or shutil.which("chromium-browser")
    if exe is None:
        if os.environ.get("CI"):
            pytest.fail("chromium not installed (CI must install Debian's chromium)")
        pytest.skip("chromium not installed")
    return exe


def _browse(chromium, url, tmp_path, screenshot: Path | None = None, size="1400,1800") -> str:
    common = [chromium, *CHROMIUM_FLAGS, f"--user-data-dir={tmp_path / 'chrome-profile'}", f"--window-size={size}",
              "--virtual-time-budget=15000"]
    if screenshot is not None:
        subprocess.run([*common, f"--screenshot={screenshot}", url], capture_output=True, timeout=180, check=True)
    r = subprocess.run([*common, "--dump-dom", url], capture_output=True, text=True, timeout=180, check=True)
    return r.stdout


class _Quiet(WSGIRequestHandler):
    def log_message(self, *args):  # noqa: ANN002
        pass


@pytest.fixture()
def dashboard(tmp_path):
    from optuna.artifacts import get_all_artifact_meta

    from autoprune.search.storage.artifacts import artifact_store, write_and_upload
    from autoprune.views.dashboard import dashboard_app

    study, url = make_study(tmp_path, n=20, name="dash-study")
    store_dir = tmp_path / "studies" / "artifacts"
    t = study.ask()  # artifacts go up while the trial is RUNNING
    ckpt = tmp_path / "pruned.pt"
    ckpt.write_bytes(b"checkpoint bytes")
    write_and_upload(t, artifact_store(store_dir), tmp_path / "trial", {"policy": {"criterion": "l1"}}, str(ckpt))
    t.set_user_attr("policy", {"criterion": "l1", "ratios": {}})
    study.tell(t, [0.95, 1.0e6, 4.0])
    metas = get_all_artifact_meta(study.trials[-1], storage=study._storage)
    httpd = make_server("127.0.0.1", 0, dashboard_app(url, store_dir), handler_class=_Quiet)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_port}", study, metas
    finally:
        httpd.shutdown()


def test_dashboard_serves_study_trials_artifacts(dashboard):
    base, study, metas = dashboard
    summaries = json.load(urllib.request.urlopen(f"{base}/api/studies"))["study_summaries"]
    assert [s["study_name"] for s in summaries] == ["dash-study"]
    detail = json.load(urllib.request.urlopen(f"{base}/api/studies/{summaries[0]['study_id']}"))
    assert detail["objective_names"] == ["mAP50-95", "params", "latency_ms"]
    assert len(detail["trials"]) == len(study.trials)
    last = detail["trials"][-1]
    names = sorted(a["filename"] for a in last["artifacts"])
    assert names == ["policy.yaml", "pruned.pt"]
    ckpt = next(a for a in last["artifacts"] if a["filename"] == "pruned.pt")
    got = urllib.request.urlopen(f"{base}/artifacts/{summaries[0]['study_id']}/{last['trial_id']}/"
                                 f"{ckpt['artifact_id']}").read()
    assert got == b"checkpoint bytes"
    assert len(metas) == 2


def test_dashboard_renders_in_chromium(dashboard, chromium, tmp_path):
    base, study, _ = dashboard
    shot = tmp_path / "dashboard.png"
    dom = _browse(chromium, f"{base}/dashboard/studies/1", tmp_path, screenshot=shot)
    assert "dash-study" in dom
    assert "Pareto Front" in dom and "mAP50-95" in dom
    assert dom.count("js-plotly-plot") >= 2  # the Pareto front and history plots were drawn
    assert shot.stat().st_size > 20_000
    trials_dom = _browse(chromium, f"{base}/dashboard/studies/1/trials", tmp_path)
    assert f"Trial {study.trials[-1].number}" in trials_dom


def test_report_is_self_contained_and_renders(tmp_path, chromium):
    from autoprune.views import write_report

    study, _ = make_study(tmp_path, n=25, name="rep")
    out = write_report(study, tmp_path / "dashboards" / "rep.html")
    page = out.read_text()
    assert re.search(r"<script[^>]*\bsrc=", page) is None  # plotly.js is inlined: works offline
    assert len(page) > 3_000_000
    shot = tmp_path / "report.png"
    dom = _browse(chromium, out.as_uri(), tmp_path, screenshot=shot, size="1400,3000")
    assert dom.count('class="plotly-graph-div') >= 6
    for title in ("Pareto front", "Per-layer ratio profiles", "Searched knobs", "Knob effects", "Hypervolume"):
        assert title in dom
    assert dom.count("main-svg") >= 6  # every figure drew its SVG
    assert shot.stat().st_size > 50_000
