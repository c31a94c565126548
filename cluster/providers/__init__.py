"""Providers: the one small interface every place that makes machines implements.

Like SkyPilot's provision/<cloud>/instance.py, each provider implements the same few calls and the
core never branches on the cloud. Cloud SDKs are imported inside the provider that needs them.
"""
from __future__ import annotations

from typing import Any, Mapping, Protocol, Sequence

from rayfleet.cluster.spec.fleet import FleetSpec, PoolSpec
from rayfleet.errors import BadInput
from rayfleet.cluster.decide.view import Instance


class Provider(Protocol):
    def launch(self, pool: PoolSpec, names: Sequence[str]) -> list[Instance]:
        """Start one machine per name. Idempotent: a name already launched is returned, not
        launched again (names are client tokens), so a controller may repeat it after a crash."""

    def terminate(self, names: Sequence[str], wait: bool = False) -> None:
        """Stop these machines. An unknown or already-gone name is done, not an error.
        With `wait`, return only once they are gone (`rayfleet down`); else return at once."""

    def instances(self) -> list[Instance]:
        """Every machine of this fleet the provider knows, including recently terminated ones."""


def require_sdk(spec: FleetSpec, where: str) -> None:
    """BadInput (exit 2, before anything starts) when the fleet's provider needs a client library
    that is not installed: `pip install 'rayfleet[aws]'` and the like."""
    import importlib.util

    sdk = spec.capabilities.sdk
    if sdk is not None and importlib.util.find_spec(sdk[0]) is None:
        raise BadInput(f"{where}: provider: {spec.provider} needs the {sdk[0]} package, which is not installed; "
                       f"pip install 'rayfleet[{sdk[1]}]'")


def make_provider(spec: FleetSpec, runtime: Mapping[str, Any]) -> Provider:
    """The provider for a fleet; `runtime` says where the fleet lives (written by `rayfleet up`)."""
    require_sdk(spec, spec.name)
    if spec.provider == "local":
        from rayfleet.cluster.providers.local import LocalProvider

        return LocalProvider.from_runtime(spec, runtime)
    if spec.provider == "aws":
        from rayfleet.cluster.providers.aws import AwsProvider  # type: ignore[import-not-found]

        return AwsProvider.from_runtime(spec, runtime)
    if spec.provider == "kubernetes":
        from rayfleet.cluster.providers.kubernetes import KubernetesProvider  # type: ignore[import-not-found]

        return KubernetesProvider.from_runtime(spec, runtime)
    raise ValueError(f"unknown provider {spec.provider}")
