"""The output directory of `prepare`: what is in it, and making the result appear at once.

Everything is built in the hidden staging folder `<out>/.prepare/`:
    plan.json       the fingerprint of this preparation (tokenizer, inputs, arguments)
    train.*, val.*  the token streams (dataprep.streams), then
    streams.json    written when the streams are complete (tokenizing is the long step)
    parts/          the finished part files, then
    manifest.json   the manifest-to-be, written once every part file is on disk
Publishing moves the part files next to it (renames, same filesystem), writes
<out>/manifest.json last and removes the staging folder. So an interrupted run leaves no
part in <out> that looks complete: part files appear only in the publishing step, and a
directory without manifest.json is not a preparation. Re-running with the same
fingerprint picks up where the run stopped (redoing the tokenizing if it was cut
short); a different fingerprint discards the unfinished staging.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from runtime import faults
from runtime.atomic import atomic_write_json, fsync_dir, read_json
from runtime.errors import UserError
from runtime.tokens import MANIFEST_NAME, ManifestError, TokenManifest, load_manifest, write_manifest

STAGING = ".prepare"


class OutputDir:
    def __init__(self, path: Path, fingerprint: str):
        self.path = path
        self.fingerprint = fingerprint
        self.staging = path / STAGING
        self.parts_dir = self.staging / "parts"
        self._created = False

    def open(self) -> str:
        """'done' (nothing to do), 'resume' or 'fresh'; a UserError if the directory holds
        something else."""
        if self.path.exists() and not self.path.is_dir():
            raise UserError(f"{self.path}: exists and is not a directory; --out must name a directory")
        manifest_path = self.path / MANIFEST_NAME
        if manifest_path.exists():
            try:
                manifest = load_manifest(manifest_path)
            except ManifestError as e:
                raise UserError(f"{e}; --out must be a new or empty directory, or one `prepare` made") from None
            if manifest.source.get("fingerprint") != self.fingerprint:
                inputs = manifest.source.get("arguments", {}).get("inputs") or ["other inputs"]
                shown = ", ".join(inputs[:3]) + (f" and {len(inputs) - 3} more" if len(inputs) > 3 else "")
                raise UserError(
                    f"{self.path}: already holds a different preparation ({len(manifest.parts)} parts, block size "
                    f"{manifest.block_size}, made from {shown}); choose another --out, or delete the directory "
                    "to prepare it again"
                )
            shutil.rmtree(self.staging, ignore_errors=True)
            return "done"
        if self.staging.is_dir():
            plan = self._read(self.staging / "plan.json")
            if plan and plan.get("fingerprint") == self.fingerprint:
                return "resume"
            self._forget_unfinished()
        elif self.path.exists() and any(self.path.iterdir()):
            raise UserError(
                f"{self.path}: exists, is not empty and is not a preparation (no {MANIFEST_NAME}); "
                "choose a new or empty --out directory"
            )
        self._created = not self.path.exists()
        self.staging.mkdir(parents=True, exist_ok=True)
        atomic_write_json(self.staging / "plan.json", {"fingerprint": self.fingerprint})
        return "fresh"

    @staticmethod
    def _read(path: Path) -> dict | None:
        try:
            return read_json(path)
        except (OSError, ValueError):
            return None

    def _forget_unfinished(self) -> None:
        """Remove another preparation's staging, and any part files it had already
        published without reaching its manifest."""
        pending = self._read(self.staging / MANIFEST_NAME)
        for part in (pending or {}).get("parts", []) + ([pending["val"]] if pending and pending.get("val") else []):
            for name in (part.get("file"), part.get("index"), part.get("mask")):
                if name and "/" not in name:
                    (self.path / name).unlink(missing_ok=True)
        shutil.rmtree(self.staging)

    def streams_done(self) -> dict | None:
        return self._read(self.staging / "streams.json")

    def mark_streams_done(self, summary: dict) -> None:
        atomic_write_json(self.staging / "streams.json", summary)

    def pending_manifest(self) -> TokenManifest | None:
        """The manifest of a run that finished its parts but not its publishing."""
        path = self.staging / MANIFEST_NAME
        return load_manifest(path) if path.exists() else None

    def publish(self, manifest: TokenManifest) -> Path:
        """Move the parts into place, then write the manifest: the preparation exists."""
        atomic_write_json(self.staging / MANIFEST_NAME, manifest.model_dump(mode="json"))
        for part in [*manifest.parts, *([manifest.val] if manifest.val else [])]:
            for name in (part.file, part.index, *([part.mask] if part.mask else [])):
                staged, final = self.parts_dir / name, self.path / name
                if staged.exists():
                    staged.replace(final)
                    faults.point("prepare.publishing")
                elif not final.exists():
                    raise UserError(
                        f"{self.staging}: the staged file {name} is missing; delete {self.path} and run prepare again"
                    )
        fsync_dir(self.path)
        path = write_manifest(self.path, manifest)
        shutil.rmtree(self.staging, ignore_errors=True)
        return path

    def discard(self) -> None:
        """After an error: remove the staging (and the directory, if this run made it)."""
        shutil.rmtree(self.staging, ignore_errors=True)
        if self._created and self.path.exists() and not any(self.path.iterdir()):
            self.path.rmdir()
