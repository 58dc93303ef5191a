"""Hub checkpoints: a save/load/push mixin over safetensors + JSON, and file resolution.

``SafetensorsHubMixin`` gives a model ``save_pretrained`` / ``from_pretrained`` / ``push_to_hub``
as ``model.safetensors`` + ``config.json`` + a ``README.md`` card, never through pickle. A card
states the architecture, parameter counts, what the model was trained on and for how long (only
what was recorded), how to use it, and the APV citation.

The signatures follow ``huggingface_hub`` and transformers: ``from_pretrained`` takes the
download arguments (``revision``, ``cache_dir``, ``force_download``, ``local_files_only``,
``token``), ``map_location`` or ``device`` and ``dtype``, refuses any other keyword, and returns
the model in ``eval()`` mode; ``push_to_hub`` takes ``private``, ``branch`` (or ``revision``),
``commit_message``, ``create_pr`` and ``token``.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any, ClassVar

import torch
from huggingface_hub import (
    ModelCard,
    PyTorchModelHubMixin,
    constants,
    hf_hub_download,
)
from huggingface_hub.errors import (
    EntryNotFoundError,
    HfHubHTTPError,
    HFValidationError,
    LocalEntryNotFoundError,
    OfflineModeIsEnabled,
    RepositoryNotFoundError,
    RevisionNotFoundError,
)

from apv_hub.config import METADATA_KEYS
from apv_hub.config_base import Config, ConfigError, read_json_object
from apv_hub.errors import ApvHubError
from apv_hub.io import write_atomic
from apv_hub.version import __version__
from apv_hub.weights import (
    CheckpointError,
    check_fits,
    load_into,
    load_tensors,
    save_tensors,
    tensor_shapes,
)

WEIGHTS_NAME = constants.SAFETENSORS_SINGLE_FILE  # "model.safetensors"
CONFIG_NAME = constants.CONFIG_NAME  # "config.json"


class PushError(ApvHubError):
    """A push to the Hub that failed (no permission, no network, an unknown repo or branch)."""


class SafetensorsHubMixin(PyTorchModelHubMixin):
    """Hub save/load for apv-hub models: safetensors weights, a JSON config, a model card.

    A subclass names its ``MODEL_TYPE`` and implements ``model_card``. A model built from one
    config (``model.config``, constructor ``cls(config, training=...)``, ``training_info``)
    names its ``CONFIG_CLASS``: config.json then holds that config's fields beside
    ``METADATA_KEYS``. Other models implement ``config_dict`` (what config.json holds) and
    ``from_config_dict`` (a fresh model from it) themselves.
    """

    MODEL_TYPE: ClassVar[str]
    CONFIG_CLASS: ClassVar[type[Config] | None] = None
    # What to do instead when asked to load a checkpoint of another model type.
    LOAD_HINTS: ClassVar[dict[str, str]] = {}

    def config_dict(self) -> dict[str, Any]:
        """What config.json holds: every config field plus library metadata."""
        if self.CONFIG_CLASS is None:
            raise NotImplementedError
        return {
            "apv_hub_version": __version__,
            **self.config.to_dict(),
            "training": self.training_info,
        }

    @classmethod
    def from_config_dict(cls, config: dict[str, Any]) -> Any:
        """A fresh model from what config.json holds (unknown and missing fields refused)."""
        if cls.CONFIG_CLASS is None:
            raise NotImplementedError
        fields = cls.CONFIG_CLASS.from_dict(config, complete=True, ignore=METADATA_KEYS)
        return cls(fields, training=config.get("training"))

    def model_card(self, repo_id: str | None = None) -> ModelCard:
        raise NotImplementedError

    def _save_pretrained(self, save_directory: Path) -> None:
        save_tensors(self.state_dict(), save_directory / WEIGHTS_NAME)
        config = {"model_type": self.MODEL_TYPE, **self.config_dict()}
        write_atomic(save_directory / CONFIG_NAME, (json.dumps(config, indent=2) + "\n").encode())
        # The mixin writes a card only where none exists; a re-save must not keep a stale one.
        (save_directory / "README.md").unlink(missing_ok=True)

    def save_pretrained(
        self,
        save_directory: str | Path,
        *,
        repo_id: str | None = None,
        push_to_hub: bool = False,
        model_card_kwargs: dict[str, Any] | None = None,
        **push_to_hub_kwargs: Any,
    ) -> str | None:
        """Write model.safetensors, config.json and the card README.md to ``save_directory``;
        with ``push_to_hub``, also push to ``repo_id`` (default: the folder's name) with
        `push_to_hub`'s keyword arguments (``private``, ``branch``, ...)."""
        super().save_pretrained(save_directory, model_card_kwargs=model_card_kwargs)
        if push_to_hub:
            return self.push_to_hub(repo_id or Path(save_directory).name, **push_to_hub_kwargs)
        return None

    def generate_model_card(self, *args: Any, **kwargs: Any) -> ModelCard:
        return self.model_card(kwargs.get("repo_id"))

    def push_to_hub(
        self,
        repo_id: str,
        *,
        private: bool | None = None,
        branch: str | None = None,
        revision: str | None = None,
        commit_message: str | None = None,
        create_pr: bool = False,
        token: str | None = None,
        extra_files: Mapping[str, str | Path] | None = None,
    ) -> str:
        """Upload model.safetensors, config.json and a model card naming ``repo_id`` (plus
        ``extra_files``, ``{name in the repo: local file}``) to the Hub in one commit.

        Args:
            repo_id: ``owner/name``; the repo is created if missing (``private`` applies then).
            private: create the repo as private (None: the owner's default).
            branch: the branch to commit to (``revision`` is the transformers name of the same
                argument); created from ``main`` when missing. Default ``main``.
            commit_message: default "Upload <class> with apv-hub".
            create_pr: open a pull request with the commit instead of committing to the branch.
            token: a Hub token (default: the logged-in one).

        Returns the commit's ``huggingface_hub.CommitInfo`` (a str: the commit URL; ``oid``,
        ``pr_url`` with ``create_pr``). Failures raise `PushError`.
        """
        if branch is not None and revision is not None and branch != revision:
            raise TypeError(f"branch={branch!r} and revision={revision!r} name different branches")
        branch = branch or revision
        from huggingface_hub import HfApi

        api = HfApi(token=token)
        where = f"Hub repository {repo_id!r}" + (f" (branch {branch!r})" if branch else "")
        try:
            repo_id = api.create_repo(repo_id, private=private, exist_ok=True).repo_id
            if branch and branch != "main" and not create_pr:
                api.create_branch(repo_id, branch=branch, exist_ok=True)
            with tempfile.TemporaryDirectory() as stage:
                stage_dir = Path(stage)
                self.save_pretrained(stage_dir, model_card_kwargs={"repo_id": repo_id})
                for name, path in (extra_files or {}).items():
                    if Path(path).is_file():
                        shutil.copy2(path, stage_dir / name)
                commit = api.upload_folder(
                    repo_id=repo_id,
                    folder_path=stage_dir,
                    commit_message=commit_message or f"Upload {type(self).__name__} with apv-hub",
                    revision=branch,
                    create_pr=create_pr,
                )
        except (HfHubHTTPError, HFValidationError, OfflineModeIsEnabled, OSError) as e:
            raise PushError(f"pushing to {where} failed: {_joined(e)}") from e
        return commit

    @classmethod
    def from_pretrained(
        cls,
        pretrained_model_name_or_path: str | Path,
        *,
        revision: str | None = None,
        cache_dir: str | Path | None = None,
        force_download: bool = False,
        local_files_only: bool = False,
        token: str | bool | None = None,
        map_location: str | torch.device | None = None,
        device: str | torch.device | None = None,
        dtype: torch.dtype | str | None = None,
    ) -> Any:
        """Load from a checkpoint folder or a Hub repo id, in ``eval()`` mode.

        Args:
            pretrained_model_name_or_path: a folder written by ``save_pretrained``, or
                ``owner/name`` on the Hub.
            revision, cache_dir, force_download, local_files_only, token: as in
                ``huggingface_hub.hf_hub_download``.
            map_location / device: where the model goes (one of the two; default cpu).
            dtype: the floating-point dtype of the weights (default: as saved, float32), a
                ``torch.dtype`` or its name (``"bfloat16"``).

        The weights are read from safetensors only, and their shapes are checked against the
        config from the file header before the model is allocated. A missing repo, revision,
        file or cache entry, a damaged file or config, or a checkpoint of another architecture
        raises a CheckpointError saying which.
        """
        model_id = str(pretrained_model_name_or_path)
        target = _target_device(map_location, device)
        dtype = _float_dtype(dtype)
        download = dict(
            revision=revision,
            cache_dir=cache_dir,
            force_download=force_download,
            local_files_only=local_files_only,
            token=token,
        )
        config_path = resolve_file(model_id, CONFIG_NAME, **download)
        try:
            config = read_json_object(config_path, what="a checkpoint config")
        except ConfigError as e:
            raise CheckpointError(str(e)) from None
        kind = config.get("model_type")
        if kind != cls.MODEL_TYPE:
            hint = f"; {cls.LOAD_HINTS[kind]}" if kind in cls.LOAD_HINTS else ""
            raise CheckpointError(
                f"{model_id} holds a {kind!r} checkpoint, not a {cls.MODEL_TYPE!r} "
                f"({cls.__name__}){hint}"
            )
        weights = resolve_file(model_id, WEIGHTS_NAME, **download)
        # The config decides the model's size: check it against the weights' header on the
        # meta device (no memory) before anything is allocated.
        skeleton = _from_config(cls, config, config_path, device="meta")
        check_fits(
            skeleton,
            tensor_shapes(weights),
            f"{model_id}: {WEIGHTS_NAME} does not match the {cls.__name__} its {CONFIG_NAME} "
            "describes",
        )
        model = _from_config(cls, config, config_path, device="cpu")
        try:
            tensors, _ = load_tensors(weights)
        except CheckpointError as e:
            if os.path.isdir(model_id):
                raise
            raise CheckpointError(f"{e}; download it again (force_download=True)") from None
        load_into(model, tensors, source=model_id)
        return model.to(device=target, dtype=dtype).eval()


def _from_config(cls: type, config: dict[str, Any], path: str, device: str) -> Any:
    """``cls.from_config_dict(config)`` built on ``device``; a bad config names its file."""
    try:
        with torch.device(device):
            return cls.from_config_dict(config)
    except ConfigError as e:
        raise CheckpointError(f"{path}: {e}") from None


def _target_device(
    map_location: str | torch.device | None, device: str | torch.device | None
) -> torch.device:
    if map_location is not None and device is not None and str(map_location) != str(device):
        raise TypeError(
            f"map_location={map_location!r} and device={device!r} disagree; pass one of them"
        )
    return torch.device(map_location or device or "cpu")


def _float_dtype(dtype: torch.dtype | str | None) -> torch.dtype | None:
    if dtype is None or isinstance(dtype, torch.dtype):
        resolved = dtype
    else:
        resolved = getattr(torch, str(dtype).removeprefix("torch."), None)
    if resolved is not None and not (
        isinstance(resolved, torch.dtype) and resolved.is_floating_point
    ):
        raise TypeError(f"dtype must be a floating-point torch.dtype or its name, got {dtype!r}")
    return resolved


def _joined(error: BaseException, limit: int = 400) -> str:
    """A client error's message on one line (the Hub's reason often follows a header line)."""
    text = " ".join(line.strip() for line in str(error).splitlines() if line.strip())
    return (text[:limit] + " ...") if len(text) > limit else text or type(error).__name__


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
    try:
        return hf_hub_download(repo_id=model_id, filename=filename, **download_kwargs)
    except Exception as e:
        message = hub_failure(e, model_id, download_kwargs.get("revision"), filename)
        if message is None:
            raise
        raise CheckpointError(message) from e


def hub_failure(
    error: BaseException,
    repo_id: str,
    revision: str | None = None,
    filename: str | None = None,
    kind: str = "repository",
) -> str | None:
    """What a ``huggingface_hub`` client error means, on one line naming the repo (a ``kind``:
    "repository", "dataset repository"), the revision and the file; None for other errors."""
    where = f"{repo_id!r} (revision {revision or 'main'!r}) at {constants.ENDPOINT}"
    # LocalEntryNotFoundError is an EntryNotFoundError: the offline case must come first.
    if isinstance(error, LocalEntryNotFoundError | OfflineModeIsEnabled):
        what = f"{filename} of {where}" if filename else where
        return (
            f"{what} is not in the local cache and the Hub cannot be reached "
            "(offline mode or no network)"
        )
    if isinstance(error, RepositoryNotFoundError):
        return f"no Hub {kind} {where}; is the name right?"
    if isinstance(error, RevisionNotFoundError):
        return f"no revision {revision!r} in Hub {kind} {repo_id!r}"
    if isinstance(error, EntryNotFoundError):
        return f"Hub {kind} {where} has no file {filename}"
    if isinstance(error, HFValidationError):
        return f"{repo_id!r} is neither a local folder nor a Hub repo id"
    return None
