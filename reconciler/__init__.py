"""reconciler: a declarative reconciler for AWS Lambda driven by Harness-CD-style YAML."""

__version__ = "0.1.0"
