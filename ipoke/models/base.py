"""The one way networks remember how they were built, and how they are saved and loaded.

Every network of ipoke subclasses :class:`SavableModule`. Its constructor takes keyword arguments only; they are
recorded as ``module.config`` so that a checkpoint can carry ``{"class_path", "init_args"}`` and be loaded with one
call and no YAML:

    save_pretrained(model, "out/autoencoder")          # out/autoencoder/{model_config.yaml, model.pt}
    model = VideoAutoencoder.from_checkpoint("out/autoencoder")
    model = VideoAutoencoder.from_checkpoint("logs/.../last.ckpt")   # a Lightning checkpoint of a training module

Lightning checkpoints written by ipoke's training modules hold, besides Lightning's own keys,
``checkpoint["ipoke_networks"] = {attribute_name: {"class_path", "init_args"}}`` (see
:func:`network_specs`), so any network trained inside them can be pulled out by attribute name.
"""

from __future__ import annotations

import functools
import importlib
import inspect
import os
from pathlib import Path
from typing import Any, TypeVar

import torch
import yaml
from torch import nn

from ipoke.utils import NotFoundError, atomic_directory, save_torch

CONFIG_FILE = "model_config.yaml"
WEIGHTS_FILE = "model.pt"
NETWORKS_KEY = "ipoke_networks"

T = TypeVar("T", bound="SavableModule")


class WeightsMismatchError(RuntimeError, ValueError):
    """Saved weights do not fit the network their config builds (e.g. another ipoke version's architecture).

    Also a ValueError, so that the command line (``ipoke sample``, ``evaluate``, ``fit``) prints the message as a
    user error instead of a traceback."""


def class_path_of(obj_or_cls: Any) -> str:
    """Dotted import path of a class or of an object's class, e.g. ``ipoke.models.autoencoder.VideoAutoencoder``."""
    cls = obj_or_cls if isinstance(obj_or_cls, type) else type(obj_or_cls)
    return f"{cls.__module__}.{cls.__qualname__}"


def import_class(class_path: str) -> type:
    """Import ``package.module.ClassName``; raises ``ValueError`` naming the path when it does not resolve."""
    module_name, _, name = class_path.rpartition(".")
    if not module_name:
        raise ValueError(f"class_path {class_path!r} is not a dotted path like 'package.module.ClassName'")
    try:
        module = importlib.import_module(module_name)
        return getattr(module, name)
    except (ImportError, AttributeError) as error:
        raise ValueError(f"cannot import class_path {class_path!r}: {error}") from error


def instantiate(spec: dict[str, Any]) -> Any:
    """Build an object from ``{"class_path": ..., "init_args": {...}}`` (Lightning's dialect), recursively."""
    if not isinstance(spec, dict) or "class_path" not in spec:
        raise ValueError(f"expected a mapping with 'class_path' (and optionally 'init_args'), got {spec!r}")
    unknown = set(spec) - {"class_path", "init_args"}
    if unknown:
        raise ValueError(f"unknown keys {sorted(unknown)} next to class_path {spec['class_path']!r}")
    cls = import_class(spec["class_path"])
    init_args = {
        key: instantiate(value) if isinstance(value, dict) and "class_path" in value else value
        for key, value in (spec.get("init_args") or {}).items()
    }
    return cls(**init_args)


class SavableModule(nn.Module):
    """``nn.Module`` whose keyword-only constructor arguments are recorded in ``self.config``.

    Subclasses write an ordinary ``__init__(self, *, ...)``; the recording wraps it. Only plain data (numbers,
    strings, lists, dicts) should be passed so that the config can be written as YAML.
    """

    config: dict[str, Any]

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        init = cls.__dict__.get("__init__")
        if init is None:
            return

        @functools.wraps(init)
        def recording_init(self: SavableModule, *args: Any, **init_kwargs: Any) -> None:
            if args:
                raise TypeError(f"{type(self).__name__} takes keyword arguments only, got {len(args)} positional")
            outermost = not self.__dict__.get("_recording_config", False)
            if outermost:
                object.__setattr__(self, "_recording_config", True)
            try:
                init(self, **init_kwargs)
            finally:
                if outermost:
                    object.__setattr__(self, "_recording_config", False)
            if outermost:
                # Every argument, defaults included: a saved network rebuilds as it was trained even if a later
                # version changes a default, and a resume names a changed default as a difference.
                object.__setattr__(self, "config", _with_defaults(type(self), dict(init_kwargs)))

        cls.__init__ = recording_init  # type: ignore[method-assign]

    def spec(self) -> dict[str, Any]:
        """``{"class_path", "init_args"}`` that rebuilds this network (without weights)."""
        return {"class_path": class_path_of(self), "init_args": _plain(self.config)}

    @classmethod
    def from_checkpoint(cls: type[T], path: str | os.PathLike, *, name: str | None = None,
                        map_location: str | torch.device = "cpu") -> T:
        """Load a network saved by :func:`save_pretrained` or trained inside an ipoke Lightning module.

        Args:
            path: A folder written by :func:`save_pretrained`, or a Lightning ``.ckpt`` written by an ipoke
                training module.
            name: For Lightning checkpoints that hold several networks, the attribute name of the one to load
                (e.g. ``"autoencoder"``). Defaults to the only network whose class is ``cls`` or a subclass.
            map_location: Where to load the tensors.

        Returns:
            The network in eval mode, with weights loaded strictly.
        """
        model = load_network(path, name=name, map_location=map_location, expected_class=cls)
        return model  # type: ignore[return-value]


def _plain(value: Any) -> Any:
    """Convert tuples to lists (and recurse) so a config dumps to YAML and compares equal after a round trip."""
    if isinstance(value, dict):
        return {key: _plain(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(item) for item in value]
    return value


def _with_defaults(cls: type, init_args: dict[str, Any]) -> dict[str, Any]:
    """``init_args`` plus the default of every keyword argument of ``cls`` that it leaves out."""
    filled = dict(init_args)
    try:
        parameters = inspect.signature(cls).parameters.values()
    except (ValueError, TypeError):
        return filled
    for parameter in parameters:
        if (parameter.name not in filled and parameter.default is not inspect.Parameter.empty
                and parameter.kind in (parameter.KEYWORD_ONLY, parameter.POSITIONAL_OR_KEYWORD)):
            filled[parameter.name] = _plain(parameter.default)
    return filled


def spec_with_defaults(spec: Any) -> Any:
    """``spec`` with every constructor argument it leaves out filled in with its default, recursively.

    A network built in Python records only the arguments it was given; one built from a config records every default
    too (jsonargparse passes them all). Filled in, the specs of two identical networks compare equal either way: a
    resume of a Python-trained checkpoint from the CLI was refused, naming defaults as differences.
    """
    if isinstance(spec, dict) and "class_path" in spec and set(spec) <= {"class_path", "init_args"}:
        init_args = {key: spec_with_defaults(value) for key, value in (spec.get("init_args") or {}).items()}
        try:
            cls = import_class(spec["class_path"])
        except (ValueError, TypeError):  # a class that no longer imports: compare what was recorded
            return {"class_path": spec["class_path"], "init_args": init_args}
        return {"class_path": spec["class_path"], "init_args": _with_defaults(cls, init_args)}
    if isinstance(spec, dict):
        return {key: spec_with_defaults(value) for key, value in spec.items()}
    if isinstance(spec, list):
        return [spec_with_defaults(value) for value in spec]
    return spec


def network_specs(module: nn.Module) -> dict[str, dict[str, Any]]:
    """Specs of the :class:`SavableModule` children of a (Lightning) module, keyed by attribute name."""
    return {name: child.spec() for name, child in module.named_children() if isinstance(child, SavableModule)}


def networks_of_class(checkpoint: dict[str, Any], cls: type | None) -> list[str]:
    """Names of the networks in a Lightning checkpoint whose class is ``cls`` or a subclass (all if ``None``)."""
    specs = checkpoint.get(NETWORKS_KEY) or {}
    return [name for name, spec in specs.items() if cls is None or issubclass(import_class(spec["class_path"]), cls)]


def clip_settings(checkpoint: dict[str, Any]) -> dict[str, int]:
    """``{"poke_size", "frame_step"}`` of the clips a Lightning checkpoint was trained on, from its datamodule
    hyperparameters (the data module's defaults, 5 and 1, when the checkpoint has none)."""
    data = checkpoint.get("datamodule_hyper_parameters") or {}
    return {"poke_size": int(data.get("poke_size", 5)), "frame_step": int(data.get("frame_step", 1))}


def save_pretrained(model: SavableModule, directory: str | os.PathLike) -> Path:
    """Write ``model_config.yaml`` and ``model.pt`` into ``directory`` atomically (all or nothing)."""
    directory = Path(directory)
    with atomic_directory(directory, marker=CONFIG_FILE) as tmp:
        (tmp / CONFIG_FILE).write_text(yaml.safe_dump(model.spec(), sort_keys=False))
        save_torch(model.state_dict(), tmp / WEIGHTS_FILE)  # a full disk: OSError, not PyTorch's RuntimeError
    return directory


def _load_state(module: nn.Module, state: dict[str, torch.Tensor], source: str) -> None:
    own = module.state_dict()
    mismatched = [f"{key} {tuple(value.shape)} (the network has {tuple(own[key].shape)})"
                  for key, value in state.items() if key in own and own[key].shape != value.shape]
    if mismatched:
        raise WeightsMismatchError(
            f"weights in {source} do not fit the {class_path_of(module)} its config builds: {mismatched[0]}"
            f"{f' and {len(mismatched) - 1} more' if len(mismatched) > 1 else ''}. Was it saved by another version of "
            "ipoke? Retrain it with this version, or load it with the version that wrote it.")
    if {value.dtype for value in state.values() if value.is_floating_point()} == {torch.float64}:
        module.double()  # weights saved in float64 stay float64 (load_state_dict cast them down to the build's fp32)
    missing, unexpected = module.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise WeightsMismatchError(
            f"weights in {source} do not match {class_path_of(module)}: missing keys {missing[:8]}"
            f"{'...' if len(missing) > 8 else ''}, unexpected keys {unexpected[:8]}"
            f"{'...' if len(unexpected) > 8 else ''}"
        )


def cpu_as_cpu(device: str | torch.device) -> str | torch.device:
    """``"cpu"`` for any name of the CPU (``"cpu:0"``, ``torch.device("cpu", 0)``), other devices as given.

    torch.load tags the loaded storages with the location it is given, and ``"cpu:0"`` is not one it restores
    ("don't know how to restore data location ... (tagged with cpu:0)"): such a model was called damaged.
    """
    return "cpu" if torch.device(device).type == "cpu" else device


def load_network(path: str | os.PathLike, *, name: str | None = None, map_location: str | torch.device = "cpu",
                 expected_class: type | None = None, checkpoint: dict[str, Any] | None = None) -> SavableModule:
    """Load any ipoke network from a :func:`save_pretrained` folder or a Lightning checkpoint (see module doc).

    ``checkpoint`` is the already loaded Lightning checkpoint at ``path``, so that callers pulling several networks
    out of one large file read it once.
    """
    map_location = cpu_as_cpu(map_location)
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"checkpoint {path} does not exist")
    if path.is_dir():
        config_file, weights_file = path / CONFIG_FILE, path / WEIGHTS_FILE
        if not config_file.exists() or not weights_file.exists():
            raise FileNotFoundError(
                f"{path} is not a saved network: expected {CONFIG_FILE} and {WEIGHTS_FILE} inside (written by "
                "ipoke.models.base.save_pretrained)")
        spec = yaml.safe_load(config_file.read_text())
        model = instantiate(spec)
        _load_state(model, torch.load(weights_file, map_location=map_location, weights_only=True), str(path))
    else:
        if checkpoint is None:
            try:
                checkpoint = torch.load(path, map_location=map_location, weights_only=False)
            except Exception as error:  # noqa: BLE001 - unpickling any file raises ImportError, KeyError, ... too
                raise ValueError(f"{path} is not a readable checkpoint ({type(error).__name__}: {error}); give a "
                                 "Lightning .ckpt written by an ipoke training module, or a save_pretrained "
                                 "folder") from None  # the message names the cause; the CLI shows this one
        specs = checkpoint.get(NETWORKS_KEY) if isinstance(checkpoint, dict) else None
        if not specs:
            raise ValueError(f"{path} carries no ipoke network configs (key {NETWORKS_KEY!r}); was it written by an "
                             "ipoke training module?")
        if name is None:
            candidates = networks_of_class(checkpoint, expected_class)
            if not candidates and expected_class is not None:
                raise ValueError(f"{path} holds no {expected_class.__name__}: its networks are {sorted(specs)} (a "
                                 "checkpoint of another stage?)")
            if len(candidates) != 1:
                raise ValueError(f"{path} holds networks {sorted(specs)}; pass name= to choose one")
            name = candidates[0]
        if name not in specs:
            raise NotFoundError(f"{path} holds no network named {name!r}; it has {sorted(specs)}")
        model = instantiate(specs[name])
        prefix = f"{name}."
        state = {key[len(prefix):]: value for key, value in checkpoint["state_dict"].items() if key.startswith(prefix)}
        _load_state(model, state, f"{path} [{name}]")
    if expected_class is not None and not isinstance(model, expected_class):
        raise TypeError(f"{path} holds a {class_path_of(model)}, not a {class_path_of(expected_class)}")
    return model.eval()
