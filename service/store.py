"""Save manylabel models to, and load them from, the BentoML model store.

A stored model is a folder holding `manifest.json` and the files it lists (`best.onnx`,
`last.onnx`, per-image scores, curves). BentoML stages a new version in a temp folder and copies it
into the store only when the `with` block succeeds; the manifest's sha256 list catches anything a
hard kill leaves half-copied, so a damaged version never loads as if it were whole.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

from service.errors import ManifestError, ModelNotFoundError
from service.manifest import MANIFEST_FILE, Manifest

FRAMEWORK_LABEL = "manylabel"


@dataclass(frozen=True)
class StoredModel:
    tag: str  # name:version
    path: Path
    manifest: Manifest

    @property
    def name(self) -> str:
        return self.tag.split(":", 1)[0]

    @property
    def version(self) -> str:
        return self.tag.split(":", 1)[1]


def save_model(source_dir: Path, manifest: Manifest) -> StoredModel:
    """Copy a finished model folder into the store as a new version of `manifest.name`."""
    import bentoml

    source_dir = Path(source_dir)
    manifest.verify_files(source_dir)
    metadata: dict = {"labels": manifest.labels, "backbone": manifest.backbone.id}
    for which, entry in manifest.models.items():
        val = entry.metrics.get("validation")
        if val is not None and val.map is not None:  # BentoML refuses None in metadata
            metadata[f"{which}_val_map"] = val.map
    with bentoml.models.create(
        manifest.name, labels={"framework": FRAMEWORK_LABEL}, metadata=metadata
    ) as ref:
        target = Path(ref.path)
        for entry in manifest.files:
            dest = target / entry.path
            dest.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source_dir / entry.path, dest)
        manifest.write(target)
        tag = str(ref.tag)
    return load_model(tag)


def load_model(name: str, version: str | None = None, *, verify: bool = True) -> StoredModel:
    """Find `name[:version]` (default latest) in the store and read its manifest."""
    import bentoml
    from bentoml.exceptions import NotFound

    tag = name if ":" in name else f"{name}:{version or 'latest'}"
    try:
        ref = bentoml.models.get(tag)
    except NotFound as exc:
        raise ModelNotFoundError(
            f"model {tag!r} is not in the BentoML model store; train one with "
            f"`manylabel train --name {tag.split(':')[0]} ...` or list them with `bentoml models list`"
        ) from exc
    except Exception as exc:  # bentoml raises plain BentoMLException for a bad tag
        raise ModelNotFoundError(f"model {tag!r} could not be read from the store: {exc}") from exc
    path = Path(ref.path)
    if not (path / MANIFEST_FILE).is_file():
        raise ManifestError(f"{ref.tag} has no {MANIFEST_FILE}: it was not saved by manylabel")
    return StoredModel(tag=str(ref.tag), path=path, manifest=Manifest.read(path, verify=verify))
