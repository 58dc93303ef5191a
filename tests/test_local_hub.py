"""The local Hub server, exercised only through the real huggingface_hub and datasets clients."""

import hashlib
import json
import os
import uuid
from pathlib import Path

import pytest
from huggingface_hub import (
    CommitOperationAdd,
    CommitOperationDelete,
    HfApi,
    HfFileSystem,
    hf_hub_download,
    snapshot_download,
)
from huggingface_hub.errors import (
    EntryNotFoundError,
    HfHubHTTPError,
    RemoteEntryNotFoundError,
    RepositoryNotFoundError,
    RevisionNotFoundError,
)

from tests.local_hub import LocalHub


@pytest.fixture(autouse=True)
def _no_unknown_routes_or_crashes(local_hub: LocalHub):
    """Fail a test whose client calls hit a route the server lacks, or crashed a handler."""
    unhandled, errors = len(local_hub.unhandled_requests), len(local_hub.errors)
    yield
    assert local_hub.unhandled_requests[unhandled:] == []
    assert local_hub.errors[errors:] == []


def _new_repo_id(name: str) -> str:
    # The hub lives for the whole session: every test gets repos of its own.
    return f"apv/{name}-{uuid.uuid4().hex[:8]}"


def test_create_repo_of_each_type_and_exist_ok(local_hub: LocalHub) -> None:
    api = HfApi()
    repo_id = _new_repo_id("model")

    url = api.create_repo(repo_id)
    assert url == f"{local_hub.endpoint}/{repo_id}"
    assert url.repo_id == repo_id
    with pytest.raises(HfHubHTTPError) as conflict:
        api.create_repo(repo_id)
    assert conflict.value.response.status_code == 409
    assert api.create_repo(repo_id, exist_ok=True) == url
    # Like on the real Hub, a new repo holds one commit with a .gitattributes file.
    assert api.list_repo_files(repo_id) == [".gitattributes"]

    dataset_id, space_id = _new_repo_id("dataset"), _new_repo_id("space")
    assert api.create_repo(dataset_id, repo_type="dataset").repo_type == "dataset"
    api.create_repo(space_id, repo_type="space", space_sdk="static")
    assert api.dataset_info(dataset_id).id == dataset_id
    assert api.space_info(space_id).id == space_id
    # Same name, other type: a different repo.
    with pytest.raises(RepositoryNotFoundError):
        api.model_info(dataset_id)


def test_upload_file_then_download_by_branch_commit_and_force(tmp_path: Path) -> None:
    api = HfApi()
    repo_id = _new_repo_id("upload-file")
    api.create_repo(repo_id)
    first = api.upload_file(
        path_or_fileobj=b"version 1", path_in_repo="notes/a.txt", repo_id=repo_id
    )
    second = api.upload_file(
        path_or_fileobj=b"version 2", path_in_repo="notes/a.txt", repo_id=repo_id
    )
    assert first.oid != second.oid
    assert api.model_info(repo_id).sha == second.oid

    cache = tmp_path / "cache"
    latest = hf_hub_download(repo_id, "notes/a.txt", cache_dir=cache)
    assert Path(latest).read_bytes() == b"version 2"
    assert Path(latest).parent.parent.name == second.oid  # snapshots/<commit>/notes/a.txt
    old = hf_hub_download(repo_id, "notes/a.txt", revision=first.oid, cache_dir=cache)
    assert Path(old).read_bytes() == b"version 1"

    # Tamper with the cached blob: a normal download trusts the cache (same ETag) ...
    Path(latest).write_bytes(b"tampered")
    assert (
        Path(hf_hub_download(repo_id, "notes/a.txt", cache_dir=cache)).read_bytes() == b"tampered"
    )
    # ... force_download fetches the content again.
    forced = hf_hub_download(repo_id, "notes/a.txt", cache_dir=cache, force_download=True)
    assert Path(forced).read_bytes() == b"version 2"


def test_upload_folder_with_nested_and_large_files(tmp_path: Path) -> None:
    api = HfApi()
    repo_id = _new_repo_id("upload-folder")
    api.create_repo(repo_id)
    folder = tmp_path / "upload"
    contents = {
        "README.md": b"---\nlicense: mit\n---\n# A test model\n",
        "config.json": json.dumps({"hidden": 8}).encode(),
        "nested/deeper/notes.txt": b"text file in a nested folder\n",
        # Binary: the server asks for it through LFS (batch API + PUT), like the real Hub.
        "nested/weights.bin": os.urandom(3 * 1024 * 1024),
    }
    for path, data in contents.items():
        (folder / path).parent.mkdir(parents=True, exist_ok=True)
        (folder / path).write_bytes(data)

    commit = api.upload_folder(folder_path=folder, repo_id=repo_id, commit_message="Add model")

    assert api.list_repo_files(repo_id) == sorted([".gitattributes", *contents])
    info = api.model_info(repo_id, files_metadata=True)
    assert info.sha == commit.oid
    siblings = {s.rfilename: s for s in info.siblings}
    assert {path: siblings[path].size for path in contents} == {
        path: len(data) for path, data in contents.items()
    }
    weights_sha256 = hashlib.sha256(contents["nested/weights.bin"]).hexdigest()
    assert siblings["nested/weights.bin"].lfs.sha256 == weights_sha256
    assert siblings["config.json"].lfs is None
    assert api.file_exists(repo_id, "nested/deeper/notes.txt")
    assert not api.file_exists(repo_id, "nested/missing.txt")

    snapshot = Path(snapshot_download(repo_id, cache_dir=tmp_path / "cache"))
    assert snapshot.name == commit.oid
    for path, data in contents.items():
        assert (snapshot / path).read_bytes() == data, path


def test_create_commit_with_additions_and_deletions(tmp_path: Path) -> None:
    api = HfApi()
    repo_id = _new_repo_id("commit")
    api.create_repo(repo_id)
    folder = tmp_path / "upload"
    for path in ("a.txt", "b.txt", "old/x.txt", "old/y.txt"):
        (folder / path).parent.mkdir(parents=True, exist_ok=True)
        (folder / path).write_text(path)
    first = api.upload_folder(folder_path=folder, repo_id=repo_id)

    second = api.create_commit(
        repo_id,
        [
            CommitOperationAdd("c.txt", b"new"),
            CommitOperationDelete("a.txt"),
            CommitOperationDelete("old/"),
        ],
        commit_message="Replace a and old/ with c",
    )

    assert api.list_repo_files(repo_id) == [".gitattributes", "b.txt", "c.txt"]
    assert "a.txt" in api.list_repo_files(repo_id, revision=first.oid)
    old_a = hf_hub_download(repo_id, "a.txt", revision=first.oid, cache_dir=tmp_path / "cache")
    assert Path(old_a).read_text() == "a.txt"
    history = api.list_repo_commits(repo_id)
    assert [c.commit_id for c in history[:2]] == [second.oid, first.oid]
    assert history[0].title == "Replace a and old/ with c"
    with pytest.raises(RemoteEntryNotFoundError):
        api.create_commit(
            repo_id, [CommitOperationDelete("never-there.txt")], commit_message="Delete nothing"
        )


def test_unknown_repo_revision_and_file_raise_client_errors(tmp_path: Path) -> None:
    api = HfApi()
    repo_id = _new_repo_id("errors")
    api.create_repo(repo_id)
    cache = tmp_path / "cache"

    with pytest.raises(RepositoryNotFoundError):
        hf_hub_download(_new_repo_id("missing"), "config.json", cache_dir=cache)
    with pytest.raises(RepositoryNotFoundError):
        api.repo_info(_new_repo_id("missing"))
    # huggingface_hub 2.4 raises RemoteEntryNotFoundError, a subclass of EntryNotFoundError.
    with pytest.raises(EntryNotFoundError) as missing_file:
        hf_hub_download(repo_id, "missing.json", cache_dir=cache)
    assert isinstance(missing_file.value, RemoteEntryNotFoundError)
    with pytest.raises(RevisionNotFoundError):
        hf_hub_download(repo_id, ".gitattributes", revision="no-such-branch", cache_dir=cache)
    with pytest.raises(RevisionNotFoundError):
        api.repo_info(repo_id, revision="0" * 40)
    assert not api.file_exists(_new_repo_id("missing"), "config.json")


def test_branches_and_tags_are_revisions(tmp_path: Path) -> None:
    api = HfApi()
    repo_id = _new_repo_id("branches")
    api.create_repo(repo_id)
    api.create_branch(repo_id, branch="dev")
    on_dev = api.upload_file(
        path_or_fileobj=b"dev only", path_in_repo="dev.txt", repo_id=repo_id, revision="dev"
    )
    api.create_tag(repo_id, tag="v0.1", revision="dev")

    refs = api.list_repo_refs(repo_id)
    assert {b.name: b.target_commit for b in refs.branches}["dev"] == on_dev.oid
    assert [(t.name, t.target_commit) for t in refs.tags] == [("v0.1", on_dev.oid)]
    assert not api.file_exists(repo_id, "dev.txt")  # main is untouched
    for revision in ("dev", "v0.1", on_dev.oid):
        path = hf_hub_download(repo_id, "dev.txt", revision=revision, cache_dir=tmp_path / "c")
        assert Path(path).read_bytes() == b"dev only"
    api.delete_branch(repo_id, branch="dev")
    with pytest.raises(RevisionNotFoundError):
        api.repo_info(repo_id, revision="dev")


def test_fresh_offline_process_is_served_from_the_cache(tmp_path: Path, run_python) -> None:
    api = HfApi()
    repo_id = _new_repo_id("offline")
    api.create_repo(repo_id)
    api.upload_file(path_or_fileobj=b"cached weights", path_in_repo="w.txt", repo_id=repo_id)
    api.upload_file(path_or_fileobj=b"never fetched", path_in_repo="other.txt", repo_id=repo_id)
    hf_home = tmp_path / "hf_home"
    hf_hub_download(repo_id, "w.txt", cache_dir=hf_home / "hub")

    code = f"""
from pathlib import Path
from huggingface_hub import hf_hub_download
from huggingface_hub.errors import LocalEntryNotFoundError
print(Path(hf_hub_download({repo_id!r}, "w.txt")).read_text())
try:
    hf_hub_download({repo_id!r}, "other.txt")  # on the server, not in the cache
except LocalEntryNotFoundError:
    print("other.txt: not in cache")
"""
    result = run_python(code, {"HF_HOME": str(hf_home), "HF_HUB_OFFLINE": "1"})

    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == ["cached weights", "other.txt: not in cache"]


def test_datasets_push_to_hub_then_load_dataset_in_fresh_process(
    tmp_path: Path, run_python
) -> None:
    import datasets

    rows = {"episode": [0, 0, 1], "step": [0, 1, 0], "reward": [0.0, 0.5, 1.0], "task": ["a"] * 3}
    datasets.Dataset.from_dict(rows).push_to_hub("apv/test-corpus")

    code = """
import json, datasets
train = datasets.load_dataset("apv/test-corpus", split="train")
print(json.dumps(train.to_dict()))
"""
    result = run_python(code, {"HF_HOME": str(tmp_path / "fresh_home")})

    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout.splitlines()[-1]) == rows


def test_standalone_hub_paginates_listings_and_serves_byte_ranges(tmp_path: Path) -> None:
    # A second server with tiny pages, so every listing spans several requests.
    with LocalHub(tmp_path / "hub", page_size=2) as hub:
        api = HfApi(endpoint=hub.endpoint)
        repo_id = _new_repo_id("pages")
        api.create_repo(repo_id, repo_type="dataset")
        names = [f"shards/part-{i}.txt" for i in range(5)]
        operations = [CommitOperationAdd(name, name.encode() * 1000) for name in names]
        api.create_commit(repo_id, operations, commit_message="Add", repo_type="dataset")

        assert api.list_repo_files(repo_id, repo_type="dataset") == [".gitattributes", *names]
        fs = HfFileSystem(endpoint=hub.endpoint, skip_instance_cache=True)
        with fs.open(f"datasets/{repo_id}/{names[3]}", "rb", block_size=64) as f:
            f.seek(5000)
            assert f.read(10) == (names[3].encode() * 1000)[5000:5010]
        assert hub.unhandled_requests == [] and hub.errors == []
    # A root given by the caller outlives the server.
    assert (tmp_path / "hub" / "datasets" / repo_id / "refs.json").is_file()
