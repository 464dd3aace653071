"""Loading registered models: `models:/NAME@ALIAS` and `models:/NAME/VERSION` to a local folder.

`encoder.resolve_model` hands such URIs to `download_registered_model`, which downloads the
version's pyfunc model once into a cache (`$SIMCSE_OPS_CACHE`, default ~/.cache/simcse-ops/registry)
and returns the sentence-transformers folder inside it (the artifact `ENCODER_ARTIFACT`, as
`serving.SentenceEncoderModel` logs it). Outside a stage, the store is the project's
(`params.yaml` in the working folder) unless MLflow was already pointed elsewhere.

This module imports neither the encoder nor the registration code (the encoder imports it).
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import yaml

from simcse_ops.config import MlflowConfig, load_params
from simcse_ops.errors import MissingInputError
from simcse_ops.files import atomic_path
from simcse_ops.store import alias_version, is_not_found, mlflow_client
from simcse_ops.tracking import configure, retry

CACHE_ENV = "SIMCSE_OPS_CACHE"
ENCODER_ARTIFACT = "encoder"  # the pyfunc artifact holding the sentence-transformers folder
ONNX_ARTIFACT = "onnx"  # the pyfunc artifact holding backends.export_onnx's folder (optional)


def parse_models_uri(uri: str) -> tuple[str, str | None, str | None]:
    """`models:/NAME@ALIAS` -> (NAME, None, ALIAS); `models:/NAME/VERSION` -> (NAME, VERSION, None)."""
    if not uri.startswith("models:/"):
        raise ValueError(f"{uri}: expected models:/NAME@ALIAS or models:/NAME/VERSION")
    rest = uri[len("models:/"):].strip("/")
    if "@" in rest:
        name, alias = rest.split("@", 1)
        if name and alias:
            return name, None, alias
    elif "/" in rest:
        name, version = rest.rsplit("/", 1)
        if name and version.isdigit():
            return name, version, None
    raise ValueError(f"{uri}: expected models:/NAME@ALIAS or models:/NAME/VERSION")


def _ensure_configured() -> MlflowConfig:
    """Outside a stage (e.g. `simcse-ops sts --model models:/...`), use the project's store."""
    # lazy: the encoder imports this module; mlflow loads only when a models:/ URI is resolved
    from mlflow.tracking._tracking_service.utils import is_tracking_uri_set

    params_path = Path("params.yaml")
    params = load_params(params_path) if params_path.is_file() else None
    mcfg = params.mlflow if params is not None else MlflowConfig()
    if not is_tracking_uri_set() and params is not None:
        configure(params_path.resolve().parent, mcfg)
    return mcfg


def _find_version(client, uri: str, name: str, version: str | None, alias: str | None, mcfg: MlflowConfig):
    """The registered version `uri` names (parsed: name, version, alias); MissingInputError when
    there is none."""
    import mlflow  # lazy: see _ensure_configured

    if alias is not None:
        mv = alias_version(client, name, alias, mcfg)
        if mv is None:
            raise MissingInputError(f"{uri}: {name} has no alias {alias!r} in {mlflow.get_tracking_uri()}")
        return mv
    try:
        return retry(lambda: client.get_model_version(name, version), f"read {name} v{version}", mcfg)
    except Exception as e:
        if is_not_found(e):
            raise MissingInputError(f"{uri}: no such version in {mlflow.get_tracking_uri()}") from e
        raise


def download_registered_model(uri: str, cache_dir: Path | str | None = None) -> Path:
    """The sentence-transformers folder of a registered version, downloaded once into a cache
    (`$SIMCSE_OPS_CACHE` or ~/.cache/simcse-ops/registry, keyed by store, name, version and its
    creation time)."""
    import mlflow  # lazy: see _ensure_configured

    name, version, alias = parse_models_uri(uri)
    mcfg = _ensure_configured()
    mv = _find_version(mlflow_client(), uri, name, version, alias, mcfg)
    base = Path(cache_dir or os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "simcse-ops" / "registry")
    store = hashlib.sha256(mlflow.get_tracking_uri().encode()).hexdigest()[:12]
    # the creation time keeps a recreated store's "version 1" from hitting an old download
    dest = base / store / name / f"{mv.version}-{mv.creation_timestamp}"
    if not (dest / "MLmodel").is_file():
        with atomic_path(dest) as tmp:
            tmp.mkdir(parents=True)
            retry(lambda: mlflow.artifacts.download_artifacts(
                artifact_uri=f"models:/{name}/{mv.version}", dst_path=str(tmp)),
                f"download {name} v{mv.version}", mcfg)
            got = [p.parent for p in tmp.rglob("MLmodel")]
            if not got:
                raise MissingInputError(f"{uri}: the download holds no MLmodel file")
            if got[0] != tmp:  # flatten to dest/MLmodel
                for p in got[0].iterdir():
                    p.rename(tmp / p.name)
    meta = yaml.safe_load((dest / "MLmodel").read_text(encoding="utf-8"))
    rel = meta["flavors"]["python_function"]["artifacts"][ENCODER_ARTIFACT]["path"]
    return dest / rel
