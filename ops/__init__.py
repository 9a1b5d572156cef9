"""Operator tools beside the services: the `parley` command, the local stack, the local models
and the ledger check. None of it runs inside a service."""
