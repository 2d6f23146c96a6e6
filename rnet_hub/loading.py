"""``rnet_hub.create_model``: one call for every way users name a RadiologyNET model.

Names accepted: ``radiologynet/resnet50``, ``hf-hub:radiologynet/resnet50@<revision>``,
``resnet50.radiologynet``, a legacy name or alias (``ResNet50``, ``res50``), a timm name
(``resnet50``), or a local converted folder. The weights come from the local folder or
from the Hub (``snapshot_download``: cache, ``HF_ENDPOINT`` and ``HF_HUB_OFFLINE`` apply).

With ``pretrained=True`` the model is built on the meta device and the safetensors weights
are assigned into it, so no time goes into a random initialisation that would be
overwritten. The adaptations timm's own loader makes are made the same way: a new head
for another ``num_classes`` (freshly initialised), ``in_chans`` through timm's
``adapt_input_conv``, and ``features_only`` models filled from the full model. The model
comes back in train mode, as from ``timm.create_model``; :func:`create_model` lists every
difference from timm's loader.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import safetensors
import safetensors.torch
import timm
import torch
from timm.models import PretrainedCfg, adapt_input_conv, load_checkpoint
from torch import nn

from .architectures import PRETRAINING_NUM_CLASSES, find_arch
from .errors import BadInputError, ConvertedFolderError
from .folder import CONFIG_NAME, WEIGHTS_NAME, pretrained_cfg, read_config
from .hub import download_model_files
from .names import ModelRef, parse_model_name

__all__ = ["assign_state", "build_timm_on_meta", "check_folder", "create_model", "ensure_materialised",
           "load_folder_weights", "load_timm_from_dir", "resolve_model_dir"]

#: The fields timm's ``PretrainedCfg`` has; ``config.json`` may carry others (newer timm, transformers), dropped.
_CFG_FIELDS = frozenset(f.name for f in dataclasses.fields(PretrainedCfg))
#: safetensors' names of the floating dtypes (``F8_*`` included: cast on load like the others).
_FLOAT_DTYPES = frozenset({"F64", "F32", "F16", "BF16", "F8_E4M3", "F8_E5M2"})


def resolve_model_dir(name: str | os.PathLike[str] | ModelRef, *,
                      cache_dir: str | os.PathLike[str] | None = None) -> Path:
    """The local folder holding ``config.json`` + ``model.safetensors`` for ``name`` (downloaded if needed)."""
    ref = name if isinstance(name, ModelRef) else parse_model_name(name)
    if ref.folder is not None:
        read_config(ref.folder)  # validates, with a message naming the fix
        return ref.folder
    return download_model_files(str(ref.repo_id), revision=ref.revision, cache_dir=cache_dir)



def build_timm_on_meta(architecture: str, **kwargs: Any) -> nn.Module:
    """``timm.create_model(architecture, **kwargs)`` with every tensor on the meta device."""
    with torch.device("meta"):
        return timm.create_model(architecture, pretrained=False, **kwargs)


def assign_state(model: nn.Module, state_dict: Mapping[str, torch.Tensor]) -> nn.Module:
    """Load ``state_dict`` into a meta-built model by assignment and check nothing stayed on meta."""
    model.load_state_dict(dict(state_dict), strict=True, assign=True)
    return ensure_materialised(model)


def ensure_materialised(model: nn.Module) -> nn.Module:
    """Fail if any parameter or buffer is still on the meta device (i.e. was never filled)."""
    leftovers = [n for n, t in [*model.named_parameters(), *model.named_buffers()] if t.is_meta]
    if leftovers:
        raise RuntimeError(f"tensors not filled by the checkpoint: {leftovers[:5]}")
    return model


def damaged_weights(path: Path, exc: BaseException) -> ConvertedFolderError:
    """The error for a ``model.safetensors`` that cannot be read (every loader of a weights file raises it)."""
    return ConvertedFolderError(f"{path} cannot be read: it is truncated or not a safetensors file ({exc}); "
                                f"convert or download the folder again")


def folder_config(model_dir: str | os.PathLike[str]) -> dict[str, Any]:
    """The checked ``config.json`` of a folder (:func:`rnet_hub.folder.read_config`), naming a timm architecture."""
    config = read_config(model_dir)
    if not timm.is_model(config["architecture"]):
        raise ConvertedFolderError(f"{Path(model_dir) / CONFIG_NAME}: 'architecture' names "
                                   f"{config['architecture']!r}, which timm {timm.__version__} does not know; "
                                   f"restore the original {CONFIG_NAME} or convert the model again")
    return config


def timm_kwargs(config: Mapping[str, Any]) -> dict[str, Any]:
    """The ``pretrained_cfg`` and ``model_args`` that build a folder's model, as timm's ``local-dir:`` loader
    makes them: only the fields timm knows, with the top-level ``num_classes`` and ``label_names`` moved in."""
    cfg = {k: v for k, v in config["pretrained_cfg"].items() if k in _CFG_FIELDS}
    cfg["num_classes"] = config["num_classes"]  # transformers' save_pretrained drops it from pretrained_cfg
    for key in ("label_names", "label_descriptions"):
        if config.get(key) is not None:
            cfg[key] = config[key]
    return {"pretrained_cfg": cfg, **(config.get("model_args") or {}), "num_classes": config["num_classes"]}


def _listed(what: str, names: list[str]) -> str | None:
    return f"{len(names)} {what} (e.g. {', '.join(names[:3])})" if names else None


def _fit_problems(model_dir: str | os.PathLike[str], expected: Mapping[str, torch.Tensor],
                  skip: Callable[[str], bool] = lambda key: False) -> tuple[list[str], dict[str, str]]:
    """What in ``model.safetensors``' header (no tensor data read) disagrees with ``expected`` (names, shapes,
    floating dtypes), leaving out the keys ``skip`` names; and the file's metadata.

    Raises:
        ConvertedFolderError: the file cannot be read (truncated, not safetensors).
    """
    path = Path(model_dir) / WEIGHTS_NAME
    try:
        with safetensors.safe_open(path, framework="pt") as weights:
            slices = {k: weights.get_slice(k) for k in weights.keys() if not skip(k)}  # noqa: SIM118
            shapes = {k: tuple(v.get_shape()) for k, v in slices.items()}
            dtypes = {k: v.get_dtype() for k, v in slices.items()}
            metadata = dict(weights.metadata() or {})
    except (OSError, safetensors.SafetensorError) as exc:
        raise damaged_weights(path, exc) from exc
    wanted = {k: v for k, v in expected.items() if not skip(k)}
    problems = [p for p in (
        _listed("missing", [k for k in wanted if k not in shapes]),
        _listed("unexpected", [k for k in shapes if k not in wanted]),
        _listed("with a size mismatch", [f"{k} {list(shapes[k])} not {list(v.shape)}" for k, v in wanted.items()
                                         if k in shapes and shapes[k] != tuple(v.shape)]),
        _listed("not floating point", [k for k, v in wanted.items() if k in shapes and v.is_floating_point()
                                       and dtypes[k] not in _FLOAT_DTYPES])) if p]
    return problems, metadata


def _check_fits(model_dir: str | os.PathLike[str], config: Mapping[str, Any],
                expected: Mapping[str, torch.Tensor]) -> None:
    """Compare the names and shapes in ``model.safetensors``' header (no tensor data read) with ``expected``.

    Raises:
        ConvertedFolderError: the file cannot be read (truncated, not safetensors), or does not fit the
            architecture ``config.json`` names (which the safetensors metadata may contradict).
    """
    problems, metadata = _fit_problems(model_dir, expected)
    if not problems:
        return
    architecture, said = config["architecture"], metadata.get("architecture")
    origin = f", but the weights were converted for {said}" if said and said != architecture else ""
    raise ConvertedFolderError(f"{model_dir}: {WEIGHTS_NAME} does not fit {architecture} ({'; '.join(problems)}); "
                               f"{CONFIG_NAME} names {architecture} with {config['num_classes']} classes{origin}: "
                               f"restore the original {CONFIG_NAME} or convert it again with `rnet-hub convert`")


def check_folder(model_dir: str | os.PathLike[str]) -> dict[str, Any]:
    """The config of a converted folder, after checking it without reading any tensor data.

    ``config.json`` is checked against the schema and names a timm architecture; ``model.safetensors``
    is a whole safetensors file whose tensor names and shapes are those of that architecture.

    Raises:
        ConvertedFolderError: naming the folder, the file and what is wrong.
    """
    config = folder_config(model_dir)
    reference = build_timm_on_meta(config["architecture"], **timm_kwargs(config))
    _check_fits(model_dir, config, reference.state_dict())
    return config


def load_folder_weights(model_dir: str | os.PathLike[str],
                        dtype: torch.dtype | None = torch.float32) -> dict[str, torch.Tensor]:
    """The tensors of a folder's ``model.safetensors``, floating ones cast to ``dtype`` (float32, as timm's
    loader gives them; ``None`` keeps the file's), checked to be finite.

    Raises:
        ConvertedFolderError: the file is truncated or damaged, or holds NaN or infinite values.
    """
    from .legacy.checkpoint import first_non_finite  # pulls in the legacy topologies: only when loading

    path = Path(model_dir) / WEIGHTS_NAME
    try:
        state = safetensors.torch.load_file(path, device="cpu")
    except (OSError, safetensors.SafetensorError) as exc:
        raise damaged_weights(path, exc) from exc
    if dtype is not None:
        for key, tensor in state.items():
            if tensor.is_floating_point() and tensor.dtype != dtype:
                state[key] = tensor.to(dtype)  # one tensor at a time: the file's copy goes as its cast comes
    bad = first_non_finite(state)
    if bad is not None:
        raise ConvertedFolderError(f"{path} holds NaN/Inf values (first: {bad}); the weights are damaged: convert "
                                   f"the model again (or download the folder again)")
    return state


def load_timm_from_dir(model_dir: str | os.PathLike[str]) -> nn.Module:
    """The timm model of a converted folder, with its weights (float32), in eval mode.

    Raises:
        ConvertedFolderError: the folder is not a converted folder, its ``config.json`` is not one
            timm can build, its weights cannot be read, hold NaN/Inf, or do not fit the architecture
            its ``config.json`` names.
    """
    config = folder_config(model_dir)
    model = build_timm_on_meta(config["architecture"], **timm_kwargs(config))
    _check_fits(model_dir, config, model.state_dict())
    model.load_state_dict(load_folder_weights(model_dir), strict=True, assign=True)
    return ensure_materialised(model).eval()


def _init_fresh(module: nn.Module) -> None:
    """Materialise a module left on meta (a new head) with its layers' default initialisation."""
    module.to_empty(device="cpu")
    for sub in module.modules():
        if hasattr(sub, "reset_parameters"):
            sub.reset_parameters()


def _adapted(config: Mapping[str, Any], *, num_classes: int, in_chans: int) -> Callable[[str], bool]:
    """Which of the folder's tensors :func:`_adapt_weights` replaces: the head for another ``num_classes``,
    the first convolution for other ``in_chans``."""
    cfg = config["pretrained_cfg"]
    head, first = cfg["classifier"] + ".", cfg["first_conv"] + ".weight"
    new_head = num_classes != config["num_classes"]
    new_input = in_chans != config["model_args"].get("in_chans", 3)
    return lambda key: (new_head and key.startswith(head)) or (new_input and key == first)


def _adapt_weights(state: dict[str, torch.Tensor], config: Mapping[str, Any], model_dir: str | os.PathLike[str], *,
                   num_classes: int, in_chans: int) -> dict[str, torch.Tensor]:
    """The changes timm's ``load_pretrained`` makes: new head, other input channels."""
    cfg = config["pretrained_cfg"]

    def unnamed(field: str) -> ConvertedFolderError:
        return ConvertedFolderError(f"{Path(model_dir) / CONFIG_NAME}: 'pretrained_cfg.{field}' names {cfg[field]!r}, "
                                    f"which has no weights in {WEIGHTS_NAME}; restore the original {CONFIG_NAME} "
                                    f"or convert the model again")

    if num_classes != config["num_classes"]:
        head = cfg["classifier"] + "."
        kept = {k: v for k, v in state.items() if not k.startswith(head)}
        if len(kept) == len(state) and config["num_classes"]:
            raise unnamed("classifier")
        state = kept
    if in_chans != config["model_args"].get("in_chans", 3):
        key = cfg["first_conv"] + ".weight"
        if key not in state:
            raise unnamed("first_conv")
        state[key] = adapt_input_conv(in_chans, state[key])
    return state


def _float_dtype(dtype: Any) -> torch.dtype:
    if dtype is None:
        return torch.float32
    if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
        raise BadInputError(f"dtype must be a floating torch dtype (e.g. torch.float32, torch.bfloat16), got {dtype!r}")
    return dtype


def _materialise_leftovers(model: nn.Module) -> None:
    """Initialise modules whose tensors stayed on meta (a new classifier, a new head)."""
    for _, module in model.named_modules():
        direct = [*module.parameters(recurse=False), *module.buffers(recurse=False)]
        if direct and all(t.is_meta for t in direct):
            _init_fresh(module)


def _fill_features_only(features: nn.Module, full: nn.Module) -> nn.Module:
    """Fill a ``features_only`` wrapper from the loaded full model (timm flattens names with '_')."""
    source = {k.replace("_", "."): v for k, v in full.state_dict().items()}
    state = {}
    for key, target in features.state_dict().items():
        value = source.get(key.replace("_", "."))
        if value is None or value.shape != target.shape:
            raise RuntimeError(f"features_only: no weight for {key} in the full model")
        state[key] = value
    return assign_state(features, state)


def _random_model(ref: ModelRef, kwargs: dict[str, Any]) -> nn.Module:
    """``pretrained=False``: timm's model with the folder's (or the table's) architecture, ``model_args``
    and ``pretrained_cfg`` (so ``num_classes`` and the preprocessing are the weights'), randomly initialised."""
    if ref.folder is not None:
        config = folder_config(ref.folder)
        architecture, built = config["architecture"], timm_kwargs(config)
    else:
        spec = ref.arch or find_arch(str(ref.repo_id).rsplit("/", 1)[1])
        cfg = pretrained_cfg(spec, num_classes=PRETRAINING_NUM_CLASSES, repo_id=str(ref.repo_id))
        architecture, built = spec.timm_arch, {"pretrained_cfg": cfg, **spec.model_args}
    return timm.create_model(architecture, pretrained=False, **{**built, **kwargs})


def create_model(name: str | os.PathLike[str], pretrained: bool = True, *,
                 cache_dir: str | os.PathLike[str] | None = None, **kwargs: Any) -> nn.Module:
    """Create a RadiologyNET timm model from any of its names: ``timm.create_model`` for converted folders.

    Every ``timm.create_model`` keyword is accepted with timm's meaning: ``num_classes``, ``in_chans``,
    ``global_pool``, ``drop_rate``, ``features_only``, ``out_indices``, ``pretrained_cfg_overlay``,
    ``checkpoint_path``, ``scriptable``, ``device``, ``dtype``, ...; any other keyword reaches the
    architecture as it would through timm (and fails there the same way). ``None`` values are dropped, as
    timm drops them. The model comes back in train mode, as timm's does: call ``.eval()`` for inference.

    The differences from ``timm.create_model(f"local-dir:{folder}", pretrained=True, **kwargs)``, which
    otherwise gives the same model (a test compares mode and state dict for several keyword sets):

    * ``name`` is any RadiologyNET name (module docstring): a folder needs no ``local-dir:``, a Hub
      repository no ``hf-hub:``, a legacy name or alias is enough. ``cache_dir`` is the Hugging Face cache.
    * ``pretrained`` defaults to ``True``. ``pretrained=False`` gives timm's randomly initialised model
      of the folder's (or the table's) architecture, ``model_args`` and ``pretrained_cfg``, as timm does
      for ``local-dir:``/``hf-hub:`` names (the table's ``pretrained_cfg`` stands in for the Hub's config).
    * The folder is checked first: ``config.json`` against the schema (:func:`rnet_hub.folder.check_config`,
      ``model_args`` only from an allow-list), the names and shapes in ``model.safetensors``' header, and
      every weight finite. A damaged folder raises :class:`~rnet_hub.errors.ConvertedFolderError` naming
      the file, the field or tensor and the fix, where timm raises what its loader meets (``KeyError``,
      ``SafetensorError``, ``RuntimeError``) or loads NaN/Inf. A keyword that changes the shape of a
      weight other than the classifier's or the first convolution's (``global_pool="catavgmax"``) raises
      :class:`~rnet_hub.errors.BadInputError` naming the tensor, where timm raises ``RuntimeError``.
    * ``dtype`` must be a floating dtype (:class:`~rnet_hub.errors.BadInputError` otherwise).
    * ``pretrained_cfg`` is refused (:class:`~rnet_hub.errors.BadInputError`; timm asserts): the folder
      gives it; ``pretrained_cfg_overlay`` changes fields of it.
    * The weights are assigned into a model built on the meta device instead of copied over a random
      initialisation: faster, one copy of the weights in memory, the same values.
    * A new head (``num_classes`` other than the folder's) is initialised by its layers'
      ``reset_parameters`` (PyTorch's defaults), not by the architecture's ``init_weights``: random either
      way, but from another distribution for some architectures (EfficientNet, MobileNetV3).
    * ``model.pretrained_cfg`` has no ``file``/``source`` (where timm's loader read the weights).

    Raises:
        ConvertedFolderError: the folder's ``config.json`` or ``model.safetensors`` is damaged.
        BadInputError: an unknown name, ``pretrained_cfg``, a ``dtype`` that is not floating, or keywords
            asking for a model the weights do not fit.
    """
    kwargs = {k: v for k, v in kwargs.items() if v is not None}
    if "pretrained_cfg" in kwargs:
        raise BadInputError("create_model takes no pretrained_cfg: the converted folder's config.json gives it "
                            "(timm refuses one for local-dir:/hf-hub: names too); pass pretrained_cfg_overlay "
                            "to change some of its fields")
    ref = parse_model_name(name)
    if not pretrained:
        return _random_model(ref, kwargs)
    dtype = _float_dtype(kwargs.pop("dtype", None))
    device = kwargs.pop("device", None)
    checkpoint_path = kwargs.pop("checkpoint_path", None)  # loaded last, as timm does
    model_dir = resolve_model_dir(ref, cache_dir=cache_dir)
    config = folder_config(model_dir)
    features_only = kwargs.pop("features_only", False)
    feature_kwargs = {k: kwargs.pop(k) for k in ("out_indices", "feature_cls", "output_stride") if k in kwargs}
    model_kwargs = {**timm_kwargs(config), **kwargs}
    model = build_timm_on_meta(config["architecture"], **model_kwargs)
    adaptation = {"num_classes": model_kwargs["num_classes"],
                  "in_chans": model_kwargs.get("in_chans", config["model_args"].get("in_chans", 3))}
    if _fit_problems(model_dir, model.state_dict(), _adapted(config, **adaptation))[0]:
        check_folder(model_dir)  # a folder that does not fit its own config.json: that error, naming the file
    state = _adapt_weights(load_folder_weights(model_dir, dtype), config, model_dir, **adaptation)
    # the weights fit the folder's own model (check_folder): a misfit now comes from the keywords
    misfit = f"{model_dir} does not fit {config['architecture']} built with {kwargs}"
    try:
        result = model.load_state_dict(state, strict=False, assign=True)
    except RuntimeError as exc:  # a size mismatch (global_pool="catavgmax" widens the classifier)
        reason = " ".join(line.strip() for line in str(exc).splitlines()[1:3])
        raise BadInputError(f"{misfit} ({reason[:200]}); leave out the options that change the architecture") from exc
    head = config["pretrained_cfg"]["classifier"] + "."
    unexpected_missing = [k for k in result.missing_keys if not k.startswith(head)]
    if result.unexpected_keys or unexpected_missing:
        raise BadInputError(f"{misfit}: missing {unexpected_missing[:5]}, unexpected {result.unexpected_keys[:5]}; "
                            f"leave out the options that change the architecture")
    _materialise_leftovers(model)
    ensure_materialised(model)
    if features_only:
        features = build_timm_on_meta(config["architecture"], features_only=True, **feature_kwargs, **model_kwargs)
        model = _fill_features_only(features, model)
    model = model.to(device=device, dtype=dtype)
    if checkpoint_path is not None:
        load_checkpoint(model, checkpoint_path)
    return model
