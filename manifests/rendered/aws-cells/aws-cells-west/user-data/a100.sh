#!/bin/bash
# rayfleet worker aws-cells-west-a100-0001 (fleet aws-cells-west, pool a100); rendered by cluster/render/aws.py.
# The Ray auth token is not in this script: the unit reads it from SSM /rayfleet/aws-cells/ray-token.
set -euo pipefail
install -d -m 0755 /etc/rayfleet
cat > /etc/rayfleet/node.env <<'RAYFLEET_EOF'
AWS_DEFAULT_REGION=us-west-2
RAYFLEET_TOKEN_PARAMETER=/rayfleet/aws-cells/ray-token
RAYFLEET_TOKEN_FILE=/run/rayfleet/ray-token
RAY_AUTH_MODE=token
RAY_AUTH_TOKEN_PATH=/run/rayfleet/ray-token
RAY_USAGE_STATS_ENABLED=0
RAYFLEET_EOF
chmod 0600 /etc/rayfleet/node.env
install -d -m 0755 /etc/rayfleet
cat > /etc/rayfleet/fetch-token.py <<'RAYFLEET_EOF'
"""Write the Ray auth token from SSM (SecureString) to a 0600 file; the token never touches user-data."""
import os

import boto3

name, path = os.environ["RAYFLEET_TOKEN_PARAMETER"], os.environ["RAYFLEET_TOKEN_FILE"]
value = boto3.client("ssm").get_parameter(Name=name, WithDecryption=True)["Parameter"]["Value"]
os.makedirs(os.path.dirname(path), mode=0o700, exist_ok=True)
fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
with os.fdopen(fd, "w") as handle:
    handle.write(value)
RAYFLEET_EOF
chmod 0644 /etc/rayfleet/fetch-token.py
install -d -m 0755 /etc/rayfleet
cat > /etc/rayfleet/start-node.sh <<'RAYFLEET_EOF'
#!/bin/bash
exec /opt/rayfleet/venv/bin/ray start --block --address=HEAD_PRIVATE_IP:GCS_PORT --num-cpus=0 --num-gpus=8 --memory=1073741824000 '--resources={"accelerator_type:A100": 1.0}' --labels=rayfleet.io/fleet=aws-cells-west,rayfleet.io/pool=a100,rayfleet.io/accelerator=A100,rayfleet.io/instance=aws-cells-west-a100-0001 --disable-usage-stats
RAYFLEET_EOF
chmod 0755 /etc/rayfleet/start-node.sh
install -d -m 0755 /etc/systemd/system
cat > /etc/systemd/system/rayfleet-node.service <<'RAYFLEET_EOF'
[Unit]
Description=rayfleet Ray worker aws-cells-west-a100-0001
After=network-online.target
Wants=network-online.target

[Service]
EnvironmentFile=/etc/rayfleet/node.env
ExecStartPre=/opt/rayfleet/venv/bin/python /etc/rayfleet/fetch-token.py
ExecStart=/etc/rayfleet/start-node.sh
Restart=on-failure
RestartSec=5

[Install]
WantedBy=multi-user.target
RAYFLEET_EOF
chmod 0644 /etc/systemd/system/rayfleet-node.service
systemctl daemon-reload
systemctl enable --now rayfleet-node.service
