#!/bin/bash
# rayfleet head of fleet aws-cells-east: Ray head + controller; rendered by cluster/render/aws.py.
# The Ray auth token is not in this script: it is read from SSM /rayfleet/aws-cells/ray-token.
set -euo pipefail
install -d -m 0755 /etc/rayfleet
cat > /etc/rayfleet/node.env <<'RAYFLEET_EOF'
AWS_DEFAULT_REGION=us-east-1
RAYFLEET_TOKEN_PARAMETER=/rayfleet/aws-cells/ray-token
RAYFLEET_TOKEN_FILE=/var/lib/rayfleet/fleets/aws-cells-east/auth_token
RAY_AUTH_MODE=token
RAY_AUTH_TOKEN_PATH=/var/lib/rayfleet/fleets/aws-cells-east/auth_token
RAY_USAGE_STATS_ENABLED=0
RAYFLEET_HOME=/var/lib/rayfleet
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
cat > /etc/rayfleet/fleet.yaml <<'RAYFLEET_EOF'
name: aws-cells-east
provider: aws
head:
  cpus: 4.0
  dashboard_host: 127.0.0.1
  fault_tolerance:
    enabled: false
    reconnect_timeout_s: 120.0
checkpoint_storage: s3://rayfleet-checkpoints/aws-cells
pools:
- name: h100
  accelerator: H100
  gpus_per_node: 8
  cpus_per_node: 192.0
  memory: 2147483648000
  min_nodes: 0
  max_nodes: 16
  nodes: 2
  hot_spares: 0
  labels: {}
  max_unavailable: 1
  provider:
    aws:
      instance_type: p5.48xlarge
      ami: ami-0a1b2c3d4e5f60718
      subnet_ids:
      - subnet-0a1b2c3d4e5f60718
      security_group_ids:
      - sg-0a1b2c3d4e5f60718
      spot: false
      spot_fallback_on_demand: true
      root_volume_gb: 500
      root_device_name: /dev/sda1
health:
  heartbeat_interval_s: 1.0
  check_interval_s: 5.0
  heartbeat_timeout_s: 3.0
  confirm_window_s: 45.0
  probe_timeout_s: 1.0
  drain_deadline_s: 10.0
  max_gpu_temperature_c: 87.0
  min_tflops_fraction: 0.7
  straggler_fraction: 0.7
  max_disk_used_fraction: 0.95
  max_memory_used_fraction: 0.97
  max_replacements_per_hour: 10
  max_quarantined: 2
  quarantine_max_age_s: 86400.0
  use_spares_first: true
scaling:
  loop_period_s: 5.0
  boot_timeout_s: 900.0
  idle_timeout_s: 600.0
  upscaling_speed: 16
  autoscale: false
aws:
  region: us-east-1
  token_ssm_parameter: /rayfleet/aws-cells/ray-token
  head_instance_type: m6i.2xlarge
  ray_bin_dir: /opt/rayfleet/venv/bin
  api_max_attempts: 5
  spot_retry_after_s: 600.0
RAYFLEET_EOF
chmod 0644 /etc/rayfleet/fleet.yaml
install -d -m 0755 /etc/systemd/system
cat > /etc/systemd/system/rayfleet-head.service <<'RAYFLEET_EOF'
[Unit]
Description=rayfleet head of fleet aws-cells-east
After=network-online.target
Wants=network-online.target

[Service]
EnvironmentFile=/etc/rayfleet/node.env
ExecStartPre=/opt/rayfleet/venv/bin/python /etc/rayfleet/fetch-token.py
ExecStart=/opt/rayfleet/venv/bin/rayfleet up -f /etc/rayfleet/fleet.yaml --no-wait
Type=oneshot
RemainAfterExit=yes

[Install]
WantedBy=multi-user.target
RAYFLEET_EOF
chmod 0644 /etc/systemd/system/rayfleet-head.service
systemctl daemon-reload
systemctl enable --now rayfleet-head.service
