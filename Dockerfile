# The image every pod of a Kubernetes fleet runs (`kubernetes.image`; rendered manifests default to
# ghcr.io/rayfleet/rayfleet:<version>): Ray's own GPU image of the Ray release rayfleet is held to,
# with rayfleet installed. py-spy (a core dependency) reads hung ranks' stacks: the rendered pods add
# SYS_PTRACE for it.
#   docker build -t REGISTRY/rayfleet:0.1.0 . && docker push REGISTRY/rayfleet:0.1.0
# then set `kubernetes.image: REGISTRY/rayfleet:0.1.0` in the fleet spec (or push to the default name).
FROM rayproject/ray:2.60.0-py311-gpu

COPY --chown=ray:users pyproject.toml README.md LICENSE /opt/rayfleet/
COPY --chown=ray:users rayfleet /opt/rayfleet/rayfleet
COPY --chown=ray:users cluster /opt/rayfleet/cluster
COPY --chown=ray:users jobs /opt/rayfleet/jobs
COPY --chown=ray:users model /opt/rayfleet/model
COPY --chown=ray:users manifests/examples /opt/rayfleet/manifests/examples
# torch from PyPI's CUDA build; the [gpu] extra adds NVML telemetry, [kubernetes] the API client
# the controller on the head pod uses.
RUN pip install --no-cache-dir "/opt/rayfleet[gpu,kubernetes]" && rayfleet --version
