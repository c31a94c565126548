"""The AWS provider: EC2 instances launched from per-pool launch templates (see provider.py)."""
from rayfleet.cluster.providers.aws.provider import AwsProvider

__all__ = ["AwsProvider"]
