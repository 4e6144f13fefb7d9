"""torch DCP loading without unpickling arbitrary objects.

torch's distributed checkpoint (DCP) stores two things with pickle: the ``.metadata`` index
(``FileSystemReader.read_metadata`` calls ``pickle.load``) and every non-tensor value of the state dict, such as
the optimizer's ``param_groups`` (``DefaultLoadPlanner.load_bytes`` calls ``torch.load(weights_only=False)``).
A checkpoint on a shared volume is input from whoever can write there, and unpickling it runs their code.

So loads go through :class:`SafeReader` and :class:`SafePlanner`: the index is read by an unpickler that can
only build the DCP metadata classes (the "restricting globals" recipe of the ``pickle`` docs; the list below is
every global a DCP index of torch 2.13 refers to), and the values by ``torch.load(weights_only=True)``, which
accepts tensors and plain containers only. Saving is unchanged (``dcp.save``): writing a pickle is harmless.
"""

from __future__ import annotations

import io
import pickle
from typing import Any

import torch
from torch.distributed.checkpoint import DefaultLoadPlanner, FileSystemReader
from torch.distributed.checkpoint._traverse import set_element  # what DefaultLoadPlanner.load_bytes uses
from torch.distributed.checkpoint.metadata import Metadata, StorageMeta
from torch.distributed.checkpoint.planner import ReadItem

_DCP_METADATA = "torch.distributed.checkpoint.metadata"
ALLOWED_GLOBALS: frozenset[tuple[str, str]] = frozenset({
    (_DCP_METADATA, "Metadata"),
    (_DCP_METADATA, "StorageMeta"),
    (_DCP_METADATA, "MetadataIndex"),
    (_DCP_METADATA, "TensorStorageMetadata"),
    (_DCP_METADATA, "BytesStorageMetadata"),
    (_DCP_METADATA, "ChunkStorageMetadata"),
    (_DCP_METADATA, "TensorProperties"),
    (_DCP_METADATA, "_MEM_FORMAT_ENCODING"),
    ("torch.distributed.checkpoint.filesystem", "_StorageInfo"),
    ("torch.serialization", "_get_layout"),  # a name -> torch.layout lookup
    ("torch", "Size"),
    ("pathlib", "PosixPath"),
    ("pathlib", "WindowsPath"),
    ("collections", "OrderedDict"),
})


class UnsafeCheckpointError(pickle.UnpicklingError):
    """A DCP index refers to something other than DCP metadata: refused, never constructed."""


class _MetadataUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in ALLOWED_GLOBALS or (
            module == "torch" and isinstance(getattr(torch, name, None), torch.dtype)
        ):
            return super().find_class(module, name)
        raise UnsafeCheckpointError(f"{module}.{name} is not a DCP metadata type: refusing to load it")


def load_metadata(stream: io.BufferedIOBase | Any) -> Metadata:
    """A DCP ``.metadata`` index, built only from :data:`ALLOWED_GLOBALS` (and torch dtypes)."""
    metadata = _MetadataUnpickler(stream).load()
    if not isinstance(metadata, Metadata):
        raise UnsafeCheckpointError(f"a DCP index holds a Metadata, not {type(metadata).__name__}")
    return metadata


class SafeReader(FileSystemReader):
    """``FileSystemReader`` whose index is read by :func:`load_metadata` instead of ``pickle.load``."""

    def read_metadata(self, *args: Any, **kwargs: Any) -> Metadata:
        path = self._get_metadata_path(kwargs.get("rank"))
        with self.fs.create_stream(path, "rb") as stream:
            metadata = load_metadata(stream)
        storage_meta = getattr(metadata, "storage_meta", None)
        if storage_meta is None:
            storage_meta = metadata.storage_meta = StorageMeta()
        storage_meta.load_id = self.load_id
        return metadata


class SafePlanner(DefaultLoadPlanner):
    """``DefaultLoadPlanner`` that reads non-tensor values with ``torch.load(weights_only=True)``."""

    def load_bytes(self, read_item: ReadItem, value: io.BytesIO) -> None:
        loaded = torch.load(value, map_location="cpu", weights_only=True)
        if self.flatten_state_dict:
            set_element(self.original_state_dict, self.mappings[read_item.dest_index.fqn], loaded)
        else:
            self.state_dict[read_item.dest_index.fqn] = loaded


def load(state_dict: dict[str, Any], checkpoint_dir: str) -> None:
    """``dcp.load`` in place, without unpickling (collective, like ``dcp.load``)."""
    import torch.distributed.checkpoint as dcp

    dcp.load(state_dict, storage_reader=SafeReader(checkpoint_dir), planner=SafePlanner())
