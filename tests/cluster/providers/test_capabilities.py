"""Providers declare what they need: a fleet whose provider's client library is missing is bad input."""
from __future__ import annotations


def test_a_provider_whose_client_library_is_missing_is_refused_with_the_extra_to_install(monkeypatch) -> None:
    """boto3 and kubernetes are extras (`rayfleet[aws]`, `rayfleet[kubernetes]`): a fleet that needs
    one that is not installed is bad input naming the file, the field and the install line."""
    import importlib.util

    import pytest

    from rayfleet.cluster.providers import require_sdk
    from rayfleet.cluster.spec.fleet import FleetSpec
    from rayfleet.errors import BadInput

    spec = FleetSpec.model_construct(name="f", provider="kubernetes")
    require_sdk(spec, "fleet.yaml")  # installed here (the test extra)
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "kubernetes" else real(name, *a))
    with pytest.raises(BadInput) as caught:
        require_sdk(spec, "fleet.yaml")
    assert str(caught.value) == ("fleet.yaml: provider: kubernetes needs the kubernetes package, which is not "
                                 "installed; pip install 'rayfleet[kubernetes]'")
    require_sdk(FleetSpec.model_construct(name="f", provider="local"), "fleet.yaml")  # a local fleet needs none
