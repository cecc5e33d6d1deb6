"""A deprecation or experimental warning attributed to the project's own modules fails the suite
(pyproject.toml's filterwarnings); third-party notices stay ignored."""
import warnings

import optuna
import pytest


@pytest.mark.parametrize("category", [FutureWarning, DeprecationWarning, optuna.exceptions.ExperimentalWarning])
@pytest.mark.parametrize("module", ["m2mdc.trial", "search.optuna_search", "analysis.baselines"])
def test_a_warning_from_the_projects_modules_is_an_error(module, category):
    with pytest.raises(category):
        warnings.warn_explicit("deprecated call", category, f"{module.replace('.', '/')}.py", 1, module=module)


def test_third_party_notices_stay_ignored():
    warnings.warn_explicit("deprecated call", FutureWarning, "fvcore/nn/focal_loss.py", 1, module="fvcore.nn")


def test_the_search_samplers_are_built_without_warnings():
    from search.optuna_search import make_sampler

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for name in ("tpe", "nsga2", "random"):
            make_sampler(name, seed=0)
