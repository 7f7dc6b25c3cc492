"""The knob table (issue 20): one declaration per knob, from which the spec reader, the space, sampling and
projection, the screen's space, the recipe, the policy codecs and file checks, and the report derive.

Nothing here is faked: real spec parsing, real Optuna trials (an in-memory study), a real policy file, the real
report functions. The toy knob exists only inside the test's ``with`` block.
"""

from __future__ import annotations

import optuna
import pytest
import yaml

from autoprune.config.spec import parse_spec
from autoprune.errors import InputError, SpecError
from autoprune.model import knobs
from autoprune.model.document import PolicyDocument, dump_policy_file, load_policy_file, schema_text
from autoprune.model.knobs import FloatRange, Knob, Real
from autoprune.model.policy import Policy
from autoprune.model.sampling import (
    finetune_knobs,
    params_for_policy,
    recipe_params,
    sample_policy,
    screen_space,
    screen_visible,
)
from autoprune.model.space import Layer, Space
from autoprune.views.report import _parallel
from autoprune.views.report_data import _hover, knob_rows

LAYERS = [Layer("model.0", 16), Layer("model.1", 32), Layer("model.2.cv1", 32, "neck")]
SPEC = {"name": "k", "model": "m.pt", "data": "d.yaml"}


def _doc(policy: Policy) -> PolicyDocument:
    return PolicyDocument(fingerprint="sha256:00", architecture="yolov8n.yaml", imgsz=160, policy=policy,
                          channels={"model.0": 12}, metrics={}, baseline={}, source={}, versions={})


def test_a_toy_knob_is_one_declaration(tmp_path):
    toy = Knob("toy", "a toy knob", Real(0.0, 2.0), None, 0.5, "finetune", screen_fix=knobs.off,
               recipe=knobs.clipped(0.3))
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    with knobs.REGISTRY.temporarily(toy):
        # parsed (bounds from the declaration), and absent from the default space
        spec = parse_spec({**SPEC, "space": {"toy": {"low": 0.1, "high": 0.9}, "round_to": [1, 8]}}, "s.yaml")
        assert spec.space.domain("toy") == FloatRange(0.1, 0.9) and Space().domain("toy") is None
        with pytest.raises(SpecError, match=r"space.toy.high: 5 is outside \[0, 2\]"):
            parse_spec({**SPEC, "space": {"toy": {"low": 0.1, "high": 5}}}, "s.yaml")
        # sampled as an Optuna parameter of its own name; unsearched it takes its value
        study = optuna.create_study(directions=["maximize", "minimize"])
        policies = []
        for _ in range(4):
            trial = study.ask()
            policy = sample_policy(trial, spec.space, LAYERS)
            assert 0.1 <= policy.value("toy") <= 0.9 and trial.params["toy"] == policy.value("toy")
            trial.set_user_attr("policy", policy.to_dict())
            study.tell(trial, [policy.value("toy"), sum(r for _, r in policy.ratios)])
            policies.append(policy)
        assert sample_policy(optuna.create_study().ask(), Space(), LAYERS).value("toy") == 0.5
        # the screen's space, the recipe and the projection follow its declaration
        assert screen_space(spec.space).domain("toy") is None and "toy" in finetune_knobs()
        assert screen_visible({"toy": 0.2, "criterion": "l1"}) == {"criterion": "l1"}
        assert recipe_params(spec.space)["toy"] == pytest.approx(0.3)
        projected = params_for_policy(spec.space, LAYERS, policies[0].to_dict())
        assert projected["toy"] == pytest.approx(policies[0].value("toy"))
        # stored in the policy file and round-tripped, with the declared bounds checked on load
        path = dump_policy_file(_doc(policies[0]), tmp_path / "policy.yaml")
        assert yaml.safe_load(path.read_text())["policy"]["toy"] == policies[0].value("toy")
        assert load_policy_file(path).policy == policies[0]
        assert Policy.from_dict(policies[0].to_dict()) == policies[0]
        raw = yaml.safe_load(path.read_text())
        raw["policy"]["toy"] = 5.0
        path.write_text(yaml.safe_dump(raw))
        with pytest.raises(InputError, match=r"policy.toy: 5.0 is outside \[0, 2\]"):
            load_policy_file(path)
        assert "  toy: [0, 2] (default 0.5)  # a toy knob" in schema_text()
        # shown in the report: a knob column of every row, an axis of the parallel coordinates, the hover
        rows = knob_rows(study)
        assert [r.knob("toy") for r in rows] == [p.value("toy") for p in policies]
        labels = [d["label"] for d in _parallel(rows, ("mAP", "size")).data[0].dimensions]
        assert "toy" in labels
        assert f"toy {policies[0].value('toy'):.2g}" in _hover(study.trials[0], ["map50_95", "params"])
    assert "toy" not in knobs.names()
    with pytest.raises(KeyError, match="toy"):  # unregistered: the policy has no such knob any more
        Policy.from_dict(policies[0].to_dict()).value("toy")


def test_every_knob_has_one_home():
    """Each knob's name is a Policy attribute, an Optuna parameter and a policy-file key; the spec key maps back."""
    policy = Policy(ratios=(("model.0", 0.1),), criterion="l2", iterations=1, lr=0.01, ema=True, epochs=1)
    assert list(policy.to_dict()) == ["ratios", *knobs.names()]
    assert {k.key for k in knobs.knobs()} >= {"criteria", "lr", "depth"}
    for knob in knobs.knobs():
        assert getattr(Space(), SPACE_ATTR.get(knob.name, knob.name)) in (knob.space, ())
        assert Space().domain(knob.name) == knob.space
        assert policy.value(knob.name) == getattr(policy, knob.name)  # the typed attribute is the table's knob
    with pytest.raises(TypeError, match="unknown knob 'nope'"):
        Policy(ratios=(), criterion="l2", iterations=1, lr=0.01, ema=True, epochs=1, nope=1)
    with pytest.raises(TypeError, match="missing knob 'criterion'"):
        Policy(ratios=(), iterations=1, lr=0.01, ema=True, epochs=1)


SPACE_ATTR = {"criterion": "criteria"}  # a Space attribute is the knob's name, but criteria (its spec key)


def test_every_knob_has_a_typed_attribute_on_policy_and_space():
    """mypy sees each knob as what it is (float, str, bool, a range, a tuple of choices), never Any: each knob of
    the table has a typed property on Policy and on Space (issue 39)."""
    import inspect

    for knob in knobs.knobs():
        for cls, attr in ((Policy, knob.name), (Space, SPACE_ATTR.get(knob.name, knob.name))):
            prop = cls.__dict__.get(attr)
            assert isinstance(prop, property), (cls.__name__, attr)
            returns = inspect.signature(prop.fget).return_annotation
            assert returns not in (inspect.Signature.empty, "Any"), (cls.__name__, attr, returns)


def test_a_space_keeps_one_canonical_form():
    assert Space().replace(lr=Space().lr) == Space()
    assert Space().replace(criteria=("l1",)).criteria == ("l1",) == Space().replace(criterion=("l1",)).criteria
    with pytest.raises(AttributeError):
        getattr(Space(), "nope")  # noqa: B009
