"""The API appendix (reference.qmd) is generated from the docstrings and cannot drift."""

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "docs"))

import reference  # noqa: E402


def test_every_public_function_class_and_method_has_a_docstring():
    assert reference.missing_docstrings() == []


def test_reference_appendix_is_up_to_date():
    committed = (ROOT / "reference.qmd").read_text()
    assert committed == reference.generate(), "reference.qmd is stale: run `python docs/reference.py`"


def test_reference_lists_the_binding_public_api():
    text = reference.generate()
    for name in ["sm.GaussianMixture", "sm.geometric_sigmas", "sm.fit", "sm.langevin",
                 "sm.annealed_langevin", "sm.reverse_sde", "sm.predictor_corrector",
                 "sm.probability_flow_ode", "sm.log_likelihood", "sm.tweedie_denoise",
                 "sm.SamplerResult", "sm.metrics.energy_test", "sm.artifacts.cached", "sm.data.mnist"]:
        assert f"`{name}`" in text, name


def test_missing_docstring_is_reported(monkeypatch):
    import score_models.noise as noise  # a module without `__all__`: its own functions are public
    import score_models.samplers as samplers  # a package that lists its public names

    def undocumented(x):
        return x

    undocumented.__module__ = noise.__name__
    monkeypatch.setattr(noise, "undocumented", undocumented, raising=False)
    monkeypatch.setattr(samplers, "undocumented_too", undocumented, raising=False)
    monkeypatch.setattr(samplers, "__all__", [*samplers.__all__, "undocumented_too"])
    missing = reference.missing_docstrings()
    assert "score_models.noise.undocumented" in missing
    assert "score_models.samplers.undocumented_too" in missing
