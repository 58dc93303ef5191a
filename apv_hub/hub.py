"""Hub checkpoints: a save/load/push mixin over safetensors + JSON, and file resolution.

``SafetensorsHubMixin`` gives a model ``save_pretrained`` / ``from_pretrained`` / ``push_to_hub``
as ``model.safetensors`` + ``config.json`` + a ``README.md`` card, never through pickle. A card
states the architecture, parameter counts, what the model was trained on and for how long (only
what was recorded), how to use it, and the APV citation.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, ClassVar

from huggingface_hub import (
    ModelCard,
    PyTorchModelHubMixin,
    constants,
    hf_hub_download,
)
from huggingface_hub.errors import (
    EntryNotFoundError,
    HFValidationError,
    LocalEntryNotFoundError,
    OfflineModeIsEnabled,
    RepositoryNotFoundError,
    RevisionNotFoundError,
)

from apv_hub.weights import CheckpointError, load_into, load_tensors, save_tensors

WEIGHTS_NAME = constants.SAFETENSORS_SINGLE_FILE  # "model.safetensors"
CONFIG_NAME = constants.CONFIG_NAME  # "config.json"
DOWNLOAD_KWARGS = ("revision", "cache_dir", "force_download", "local_files_only", "token")


class SafetensorsHubMixin(PyTorchModelHubMixin):
    """Hub save/load for apv-hub models: safetensors weights, a JSON config, a model card.

    A subclass names its ``MODEL_TYPE`` and implements ``config_dict`` (what config.json holds),
    ``from_config_dict`` (a fresh model from it) and ``model_card``.
    """

    MODEL_TYPE: ClassVar[str]
    # What to do instead when asked to load a checkpoint of another model type.
    LOAD_HINTS: ClassVar[dict[str, str]] = {}

    def config_dict(self) -> dict[str, Any]:
        raise NotImplementedError

    @classmethod
    def from_config_dict(cls, config: dict[str, Any]) -> Any:
        raise NotImplementedError

    def model_card(self, repo_id: str | None = None) -> ModelCard:
        raise NotImplementedError

    def _save_pretrained(self, save_directory: Path) -> None:
        save_tensors(self.state_dict(), save_directory / WEIGHTS_NAME)
        config = {"model_type": self.MODEL_TYPE, **self.config_dict()}
        (save_directory / CONFIG_NAME).write_text(json.dumps(config, indent=2) + "\n")
        # The mixin writes a card only where none exists; a re-save must not keep a stale one.
        (save_directory / "README.md").unlink(missing_ok=True)

    def push_to_hub(self, repo_id: str, **kwargs: Any) -> str:
        """Upload model.safetensors, config.json and a model card to the Hub repo ``repo_id``."""
        card_kwargs = {"repo_id": repo_id, **(kwargs.pop("model_card_kwargs", None) or {})}
        return super().push_to_hub(repo_id, model_card_kwargs=card_kwargs, **kwargs)

    def generate_model_card(self, *args: Any, **kwargs: Any) -> ModelCard:
        return self.model_card(kwargs.get("repo_id"))

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path: str | Path, **kwargs: Any) -> Any:
        """Load from a checkpoint folder or a Hub repo id (``revision``, ``cache_dir``, ...).

        The weights are read from safetensors only; a missing repo, file or cache entry, a damaged
        file or a checkpoint of another architecture raises a CheckpointError saying which.
        """
        download = {k: kwargs[k] for k in DOWNLOAD_KWARGS if k in kwargs}
        # Resolve config.json first: the mixin would swallow or obscure a failed lookup.
        resolve_file(str(pretrained_model_name_or_path), CONFIG_NAME, **download)
        return super().from_pretrained(pretrained_model_name_or_path, **kwargs)

    @classmethod
    def _from_pretrained(
        cls,
        *,
        model_id: str,
        revision: str | None,
        cache_dir: str | Path | None,
        force_download: bool,
        local_files_only: bool,
        token: str | bool | None,
        config: dict | None = None,
        map_location: str = "cpu",
        **unused: Any,
    ) -> Any:
        if config is None:
            raise CheckpointError(f"{model_id} has no readable {CONFIG_NAME}")
        kind = config.get("model_type")
        if kind != cls.MODEL_TYPE:
            hint = f"; {cls.LOAD_HINTS[kind]}" if kind in cls.LOAD_HINTS else ""
            raise CheckpointError(
                f"{model_id} holds a {kind!r} checkpoint, not a {cls.MODEL_TYPE!r} "
                f"({cls.__name__}){hint}"
            )
        model = cls.from_config_dict(config)
        weights = resolve_file(
            model_id,
            WEIGHTS_NAME,
            revision=revision,
            cache_dir=cache_dir,
            force_download=force_download,
            local_files_only=local_files_only,
            token=token,
        )
        tensors, _ = load_tensors(weights, device=map_location)
        load_into(model, tensors, source=model_id)
        return model.to(map_location)


def resolve_file(model_id: str, filename: str, **download_kwargs: Any) -> str:
    """Local path of ``filename`` from a checkpoint folder or a Hub repo (downloaded and cached).

    Client errors become a CheckpointError that says which repo, revision and file failed.
    """
    if os.path.isdir(model_id):
        path = os.path.join(model_id, filename)
        if not os.path.isfile(path):
            raise CheckpointError(f"{model_id} is a folder without {filename}")
        return path
    if model_id.startswith((".", "/", "~")) or model_id.count("/") > 1:
        raise CheckpointError(f"no checkpoint folder at {model_id}")
    revision = download_kwargs.get("revision") or "main"
    where = f"{model_id!r} (revision {revision!r}) at {constants.ENDPOINT}"
    try:
        return hf_hub_download(repo_id=model_id, filename=filename, **download_kwargs)
    except RepositoryNotFoundError as e:
        raise CheckpointError(f"no Hub repository {where}; is the name right?") from e
    except RevisionNotFoundError as e:
        raise CheckpointError(f"no revision {revision!r} in Hub repository {model_id!r}") from e
    # LocalEntryNotFoundError is an EntryNotFoundError: the offline case must come first.
    except (LocalEntryNotFoundError, OfflineModeIsEnabled) as e:
        raise CheckpointError(
            f"{filename} of {where} is not in the local cache and the Hub cannot be reached "
            "(offline mode or no network)"
        ) from e
    except EntryNotFoundError as e:
        raise CheckpointError(f"Hub repository {where} has no file {filename}") from e
    except HFValidationError as e:
        raise CheckpointError(f"{model_id!r} is neither a checkpoint folder nor a repo id") from e
