"""m2mdc.config: the one place a configuration is flattened, nested, parsed from tracked strings and hashed."""
import pytest
from hypothesis import given, strategies as st

from m2mdc.config import Config, flatten, nest, parse_tracked, spread
from m2mdc.errors import UserError
from m2mdc.knobs import KNOBS

STAGES = ["layer1", "layer2", "layer3", "layer4"]
fraction = st.floats(0.01, 1.0, allow_nan=False)
configs = st.fixed_dictionaries({}, optional={
    "prune_ratio": st.floats(0, 0.95), "mid_keep": fraction, "qat": st.booleans(),
    "signal": st.sampled_from(["bn", "l1", "group_l1"]),
    "planes_keep": st.one_of(fraction, st.fixed_dictionaries({s: fraction for s in STAGES}))})


@given(configs)
def test_flat_nest_and_tracked_strings_round_trip(knobs):
    c = Config.of(knobs)
    assert nest(c.flat()) == knobs
    assert all("/" not in k or k.split("/")[0] == "planes_keep" for k in c.flat())
    tracked = {k: str(v) for k, v in c.flat().items()}  # what MLflow hands back
    back = Config.from_tracked(tracked)
    assert flatten(back.knobs) == {k: (float(v) if not isinstance(v, (bool, str)) else v) for k, v in c.flat().items()}
    assert Config.of(dict(reversed(list(knobs.items())))).hash == c.hash


def test_parse_spread_and_bad_names():
    assert [parse_tracked(x) for x in ("True", "0.25", "bpm", 3)] == [True, 0.25, "bpm", 3]
    assert spread(0.5, STAGES) == {s: 0.5 for s in STAGES} and spread({"layer1": 1}, STAGES) == {"layer1": 1}
    assert Config.from_tracked({"prune_ratio": "0.5", "trial_id": "x"}, ignore=("trial_id",)).knobs == {"prune_ratio": 0.5}
    with pytest.raises(UserError, match="unknown knob"):
        Config.of({"prune_ratioo": 0.5})
    single = next(n for n, k in KNOBS.items() if not k.per_stage)
    with pytest.raises(UserError, match="one value"):
        Config.of({single: {"layer1": 0.5}})
