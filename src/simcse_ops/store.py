"""The MLflow model registry's plumbing, shared by registration, people's actions and loading.

Each variant is a registered model `<register.model_prefix><variant>` (`simcse-<variant>`) with two
aliases: `challenger` = the newest registered version, `champion` = the one to serve. A version is
tagged `registry.state=pending` until its registration completed (`complete`).

This module holds those names, the client, and the look-ups every registry module needs, each
retried on connection errors (`tracking.retry`). mlflow is imported inside the functions, so that
importing the package (and `simcse-ops --help`) does not load it.
"""

from __future__ import annotations

from simcse_ops.config import MlflowConfig
from simcse_ops.tracking import retry

CHALLENGER = "challenger"
CHAMPION = "champion"
PENDING, COMPLETE = "pending", "complete"


def mlflow_client():
    """An `MlflowClient` on the configured store (`tracking.configure`)."""
    from mlflow import MlflowClient  # lazy: keeps `simcse-ops --help` from loading mlflow

    return MlflowClient()


def is_not_found(e: Exception) -> bool:
    """True when `e` is MLflow's answer for a missing model, version, alias or artifact."""
    from mlflow.exceptions import MlflowException  # lazy: see mlflow_client()

    return isinstance(e, MlflowException) and (
        e.error_code in ("RESOURCE_DOES_NOT_EXIST", "NOT_FOUND") or "not found" in str(e).lower()
    )


def alias_version(client, name: str, alias: str, cfg: MlflowConfig):
    """The version holding `alias`, or None."""
    def get():
        try:
            return client.get_model_version_by_alias(name, alias)
        except Exception as e:
            if is_not_found(e):
                return None
            raise

    return retry(get, f"look up {name}@{alias}", cfg)


def ensure_registered_model(client, name: str, cfg: MlflowConfig) -> None:
    """Create the registered model `name` unless it exists (or another process just made it)."""
    def ensure():
        try:
            client.get_registered_model(name)
        except Exception as e:
            if not is_not_found(e):
                raise
            try:
                client.create_registered_model(name, description=f"SimCSE encoder {name}")
            except Exception as e2:
                if "already exists" not in str(e2).lower():
                    raise

    retry(ensure, f"create registered model {name}", cfg)


def versions(client, name: str, cfg: MlflowConfig) -> list:
    """Every version of `name`."""
    return retry(lambda: list(client.search_model_versions(f"name = '{name}'")), f"list versions of {name}", cfg)
