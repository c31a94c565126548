"""The AWS provider: EC2 instances launched from per-pool launch templates (see provider.py)."""
from cluster.providers.aws.provider import AwsProvider

__all__ = ["AwsProvider"]
