"""Talking to AWS for deployments: boto3 clients, typed calls, waiters and retries (`client`),
Lambda's API quotas shared by every client and thread (`quota`), CloudWatch alarms for rollouts
(`cloudwatch`), and reading secret values (`secrets`). The only package, with `reconciler.store`'s backends, that imports boto3.

May import: `reconciler.util`, `reconciler.model`, `reconciler.errors`.
"""
