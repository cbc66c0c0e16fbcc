"""Hugging Face Hub uploads: plan (which files changed) and commit. The token comes only from the
environment (`dagster.EnvVar("HF_TOKEN")`) and is never logged or put in metadata."""

import hashlib
import os
from dataclasses import dataclass, field
from typing import Iterable, Optional

import dagster as dg


def git_blob_sha1(data: bytes) -> str:
    """The git object id of a file's content (what the Hub reports as `blob_id` for non-LFS files)."""
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def sha256_file(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


@dataclass
class RemoteFile:
    path: str
    blob_id: Optional[str] = None  # git sha1 of the content (non-LFS files)
    sha256: Optional[str] = None  # LFS files (parquet)


@dataclass
class UploadPlan:
    upload: list[str] = field(default_factory=list)  # paths in repo
    skip: list[str] = field(default_factory=list)  # unchanged
    delete: list[str] = field(default_factory=list)  # remote data files no longer exported

    def as_dict(self) -> dict:
        return {"upload": self.upload, "skip": self.skip, "delete": self.delete}


def plan_upload(local_root: str, local_files: Iterable[str], remote: Iterable[RemoteFile],
                managed_prefix: str = "data/") -> UploadPlan:
    """Which files to send: new or changed content only (sha256 for LFS files, git blob id
    otherwise); remote files under `managed_prefix` that the export no longer has are deleted."""
    remote_by_path = {r.path: r for r in remote}
    plan = UploadPlan()
    local = sorted(local_files)
    for rel in local:
        r = remote_by_path.get(rel)
        full = os.path.join(local_root, rel)
        same = False
        if r is not None:
            if r.sha256:
                same = sha256_file(full) == r.sha256
            elif r.blob_id:
                with open(full, "rb") as fh:
                    same = git_blob_sha1(fh.read()) == r.blob_id
        (plan.skip if same else plan.upload).append(rel)
    plan.delete = sorted(p for p in remote_by_path if p.startswith(managed_prefix) and p not in set(local))
    return plan


def shrink_reason(local_files: Iterable[str], remote: Iterable[RemoteFile], managed_prefix: str = "data/") -> Optional[str]:
    """Why publishing this export would take data off the Hub, or None: the export has no data file
    while the repo has some (an empty export deletes every shard), or a config the repo holds would
    lose all its files (`data/<config>/...`). Rows within a config are not compared (the remote
    counts are not read)."""
    def configs(paths) -> dict[str, int]:
        out: dict[str, int] = {}
        for p in paths:
            if p.startswith(managed_prefix) and p.endswith(".parquet"):
                cfg = p[len(managed_prefix):].split("/", 1)[0]
                out[cfg] = out.get(cfg, 0) + 1
        return out

    here, there = configs(local_files), configs(r.path for r in remote)
    if there and not here:
        return f"the export is empty: publishing it would delete the repo's {sum(there.values())} data files"
    gone = sorted(set(there) - set(here))
    if gone:
        return (f"the export has no {', '.join(gone)} config{'s' if len(gone) > 1 else ''}: publishing it would "
                f"delete {sum(there[c] for c in gone)} data files of the repo")
    return None


class HubResource(dg.ConfigurableResource):
    """`repo_id` ("" = local export only), `private`, and `token` from the environment:
    `HubResource(token=dg.EnvVar("HF_TOKEN"))` (definitions.py does this when HF_TOKEN is set)."""

    repo_id: str = ""
    private: bool = True
    token: Optional[str] = None
    revision: Optional[str] = None

    def ready(self) -> tuple[bool, str]:
        if not self.repo_id:
            return False, "local export only: set the hub resource's repo_id (and HF_TOKEN) to upload"
        if not self.token:
            return False, f"local export only: HF_TOKEN is not set in the environment (repo {self.repo_id})"
        return True, ""

    def _api(self):
        from huggingface_hub import HfApi

        return HfApi(token=self.token)

    def remote_files(self) -> list[RemoteFile]:
        from huggingface_hub.errors import RepositoryNotFoundError
        from huggingface_hub.hf_api import RepoFile

        try:
            entries = self._api().list_repo_tree(self.repo_id, repo_type="dataset", recursive=True,
                                                 revision=self.revision)
            out = []
            for e in entries:
                if isinstance(e, RepoFile):
                    lfs = e.lfs
                    sha = (lfs.get("sha256") if isinstance(lfs, dict) else getattr(lfs, "sha256", None)) if lfs else None
                    out.append(RemoteFile(e.path, blob_id=e.blob_id, sha256=sha))
            return out
        except RepositoryNotFoundError:
            return []

    def upload(self, local_root: str, plan: UploadPlan, message: str) -> Optional[str]:
        """Create the dataset repo if needed and commit the planned changes; returns the commit URL."""
        from huggingface_hub import CommitOperationAdd, CommitOperationDelete

        api = self._api()
        api.create_repo(self.repo_id, repo_type="dataset", private=self.private, exist_ok=True)
        ops = [CommitOperationAdd(path_in_repo=p, path_or_fileobj=os.path.join(local_root, p)) for p in plan.upload]
        ops += [CommitOperationDelete(path_in_repo=p) for p in plan.delete]
        if not ops:
            return None
        info = api.create_commit(self.repo_id, ops, commit_message=message, repo_type="dataset",
                                 revision=self.revision)
        return getattr(info, "commit_url", None)
