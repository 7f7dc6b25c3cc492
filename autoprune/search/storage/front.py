"""The Pareto front as a first-class SQL table, next to Optuna's tables in the same database.

After every finished trial the study's front (Optuna's ``best_trials``: feasible,
non-dominated COMPLETE trials) is synchronised into ``autoprune_front``, one row per
front member.  Another tool reads it with one query::

    SELECT trial_number, map50_95, params, latency_ms, policy_json, artifact_dir, joined_at
    FROM autoprune_front WHERE study_name = 'demo' ORDER BY map50_95 DESC;
"""

from __future__ import annotations

import datetime as dt
import json
import logging
from collections.abc import Collection
from typing import Any

import optuna
import sqlalchemy as sa
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from autoprune.model import records
from autoprune.model.timing import latency_flags
from autoprune.search.storage.study import StudyStorage

logger = logging.getLogger(__name__)

__all__ = ["FrontRow", "FrontBase", "sync_front", "read_front", "ensure_schema", "SCHEMA_VERSION", "latency_checks",
           "with_delivered"]

SCHEMA_VERSION = 1


class FrontBase(DeclarativeBase):
    pass


class FrontRow(FrontBase):
    __tablename__ = "autoprune_front"
    __table_args__ = (sa.UniqueConstraint("study_name", "trial_number", name="uq_autoprune_front_trial"),)

    id: Mapped[int] = mapped_column(primary_key=True, autoincrement=True)
    study_name: Mapped[str] = mapped_column(sa.String(512), index=True)
    trial_number: Mapped[int] = mapped_column(sa.Integer)
    trial_id: Mapped[int] = mapped_column(sa.Integer)
    map50_95: Mapped[float | None] = mapped_column(sa.Float, nullable=True)
    map50: Mapped[float | None] = mapped_column(sa.Float, nullable=True)
    params: Mapped[float | None] = mapped_column(sa.Float, nullable=True)
    macs: Mapped[float | None] = mapped_column(sa.Float, nullable=True)
    latency_ms: Mapped[float | None] = mapped_column(sa.Float, nullable=True)
    values_json: Mapped[str] = mapped_column(sa.Text)  # the study's objective values, by objective name
    policy_json: Mapped[str] = mapped_column(sa.Text)
    artifact_dir: Mapped[str | None] = mapped_column(sa.Text, nullable=True)
    checkpoint: Mapped[str | None] = mapped_column(sa.Text, nullable=True)
    joined_at: Mapped[dt.datetime] = mapped_column(sa.DateTime)

    def as_dict(self) -> dict[str, Any]:
        return {"study_name": self.study_name, "trial_number": self.trial_number, "trial_id": self.trial_id,
                "map50_95": self.map50_95, "map50": self.map50, "params": self.params, "macs": self.macs,
                "latency_ms": self.latency_ms, "values": json.loads(self.values_json),
                "policy": json.loads(self.policy_json), "artifact_dir": self.artifact_dir,
                "checkpoint": self.checkpoint, "joined_at": self.joined_at.isoformat()}


class SchemaVersion(FrontBase):
    __tablename__ = "autoprune_schema"

    component: Mapped[str] = mapped_column(sa.String(64), primary_key=True)
    version: Mapped[int] = mapped_column(sa.Integer)


def ensure_schema(engine: sa.Engine) -> None:
    """Create (or migrate) autoprune's tables; idempotent."""
    FrontBase.metadata.create_all(engine)
    with sa.orm.Session(engine) as s, s.begin():
        row = s.get(SchemaVersion, "front")
        if row is None:
            s.add(SchemaVersion(component="front", version=SCHEMA_VERSION))
        elif row.version != SCHEMA_VERSION:  # future migrations go here, oldest first
            row.version = SCHEMA_VERSION


def sync_front(study: optuna.Study, store: StudyStorage) -> list[int]:
    """Make ``autoprune_front`` equal to the study's current Pareto front; returns its trial numbers."""
    engine = store.engine  # the same database as the study
    ensure_schema(engine)
    names = records.study_objectives(study)
    sid = store.rdb.get_study_id_from_name(study.study_name)
    best = {t.number: t for t in study.best_trials}
    now = dt.datetime.now(dt.timezone.utc).replace(tzinfo=None)
    with sa.orm.Session(engine) as s, s.begin():
        query = sa.select(FrontRow).where(FrontRow.study_name == study.study_name)
        rows = {r.trial_number: r for r in s.scalars(query)}
        for number, gone in rows.items():
            if number not in best:
                s.delete(gone)
        for number, t in best.items():
            values_json = json.dumps(dict(zip(names, t.values)))
            row = rows.get(number)
            if row is not None and row.values_json == values_json:
                continue
            rec = records.trial(t)
            metrics = {**rec.metrics, **dict(zip(names, t.values))}
            if row is None:  # a new member; a member whose values changed (autoprune remeasure) keeps its joined_at
                row = FrontRow(study_name=study.study_name, trial_number=number,
                               trial_id=store.rdb.get_trial_id_from_study_id_trial_number(sid, number), joined_at=now)
                s.add(row)
            row.map50_95, row.map50 = metrics.get("map50_95"), metrics.get("map50")
            row.params, row.macs, row.latency_ms = metrics.get("params"), metrics.get("macs"), metrics.get("latency_ms")
            row.values_json = values_json
            row.policy_json = json.dumps(rec.policy or {}, sort_keys=True)
            row.artifact_dir, row.checkpoint = rec.artifact_dir, rec.checkpoint
    return sorted(best)


def read_front(engine: sa.Engine, study_name: str) -> list[dict[str, Any]]:
    ensure_schema(engine)
    with sa.orm.Session(engine) as s:
        rows = s.scalars(sa.select(FrontRow).where(FrontRow.study_name == study_name)
                         .order_by(FrontRow.trial_number)).all()
        return [r.as_dict() for r in rows]


def with_delivered(study: optuna.Study, rows: list[dict[str, Any]], delivered: Collection[int]) -> list[dict[str, Any]]:
    """``rows`` (:func:`read_front`) and a row for each ``delivered`` trial that is not on the front (the search's
    proxy put it behind others, e.g. the hand recipe's model before its fine-tune): what a user deploys is always
    listed."""
    on = {r["trial_number"] for r in rows}
    names = records.study_objectives(study)
    extra = [{"trial_number": t.number, "values": dict(zip(names, t.values)), "policy": records.trial(t).policy or {},
              "joined_at": "(delivered, off the front)"}
             for t in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
             if t.number in delivered and t.number not in on]
    return [*rows, *extra]


def latency_checks(study: optuna.Study) -> dict[int, list[str]]:
    """``{trial number: reasons to doubt its latency}`` for the front members with any (see model.timing)."""
    base = records.baseline_metrics(study)
    out = {}
    for t in study.best_trials:
        rec = records.trial(t)
        flags = latency_flags(rec.metrics, rec.latency, base)
        if flags:
            out[t.number] = flags
    return out
