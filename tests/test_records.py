"""The typed trial result (issue 20): engine -> executor payload -> study attributes, one dataclass end to end."""

from __future__ import annotations

import json

from autoprune.model.records import TrialResult
from autoprune.search.execution.executor import PAYLOAD_KEY, decode, encode


def test_a_trial_result_round_trips_through_the_workers_payload():
    r = TrialResult(ok=True, metrics={"map50_95": 0.5}, policy={"criterion": "l1"}, channels={"model.0": 8},
                    wall_seconds=1.5, ray_worker={"pid": 7, "jobs": 2})
    back = decode(encode(r))
    assert back == r
    assert back.attrs == {"policy": {"criterion": "l1"}, "channels": {"model.0": 8}, "wall_seconds": 1.5,
                          "ray_worker": {"pid": 7, "jobs": 2}}  # None fields are not recorded


def test_attributes_this_version_does_not_know_are_kept():
    payload = {PAYLOAD_KEY: json.dumps({"ok": False, "metrics": {}, "reason": "boom",
                                        "attrs": {"future_key": [1, 2], "policy": {"criterion": "l2"}}})}
    r = decode(payload)
    assert r is not None and not r.ok and r.reason == "boom" and r.policy == {"criterion": "l2"}
    assert r.attrs == {"future_key": [1, 2], "policy": {"criterion": "l2"}}
    assert decode({PAYLOAD_KEY: "not json"}) is None and decode(None) is None
