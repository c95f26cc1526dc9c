"""Reading and writing checkpoint folders safely.

Weights are read from model.safetensors, pytorch_model.bin, or shards of either with an index; a
truncated or corrupt file is a CheckpointError naming it. Folders are written under a temporary
name and renamed, so a crash never leaves a half-written checkpoint.
"""
from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
from pathlib import Path

import torch


class CheckpointError(ValueError):
    """A checkpoint that cannot be read: missing, corrupt, or not matching its config."""


_INDEXES = ("model.safetensors.index.json", "pytorch_model.bin.index.json")  # shard indexes, in this order


def read_config(path: Path) -> dict:
    if not path.is_dir():
        raise CheckpointError(f"{path}: not a checkpoint folder (expected a folder with config.json and weights)")
    cfg = path / "config.json"
    if not cfg.exists():
        raise CheckpointError(f"{cfg}: missing; a checkpoint folder needs config.json")
    try:
        text = cfg.read_text(encoding="utf-8")
    except OSError as err:  # a folder of that name, no permission: the CLI's error, not a traceback
        raise CheckpointError(f"{cfg}: cannot read it ({err.strerror or err})") from err
    except UnicodeDecodeError as err:
        raise CheckpointError(f"{cfg}: not valid JSON ({err})") from err
    try:
        raw = json.loads(text)
    except json.JSONDecodeError as err:
        raise CheckpointError(f"{cfg}: not valid JSON ({err})") from err
    if not isinstance(raw, dict):
        raise CheckpointError(f"{cfg}: expected a JSON object of config fields, got {type(raw).__name__}")
    return raw


_LFS_MAGIC = b"version https://git-lfs"  # how a Git LFS pointer file begins


def _lfs_pointer(f: Path) -> CheckpointError | None:
    """The error for a Git LFS pointer file (a clone without git-lfs) in place of the weights, else None."""
    try:
        with open(f, "rb") as fh:
            head = fh.read(len(_LFS_MAGIC))
    except OSError:
        return None
    if head != _LFS_MAGIC:
        return None
    return CheckpointError(f"{f}: a Git LFS pointer, not the weights (the repository was cloned without git-lfs); "
                           "fetch the files with `git lfs pull` in that repository, or download them again")


def _read_safetensors(f: Path) -> dict:
    from safetensors.torch import load_file
    try:
        return load_file(str(f))
    except Exception as err:  # safetensors raises its own error types for truncation
        raise (_lfs_pointer(f) or CheckpointError(
            f"{f}: cannot read safetensors file (truncated or corrupt?): {err}")) from err


def read_weights(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """The tensors of a checkpoint folder and, for each key, the name of the file that holds it."""
    indexes = [path / n for n in _INDEXES if (path / n).exists()]
    if (path / "model.safetensors").exists():
        files = ["model.safetensors"]
    elif indexes and not (path / "pytorch_model.bin").exists():
        # A download of only the .bin shards keeps both indexes: take the first whose shards are all here.
        shard_lists = [_shards(index) for index in indexes]
        complete = [names for names in shard_lists if all((path / n).exists() for n in names)]
        if not complete:
            missing = next(n for n in shard_lists[0] if not (path / n).exists())
            raise CheckpointError(f"{path / missing}: missing; {indexes[0].name} lists it as a shard")
        files = complete[0]
    else:
        files = [name for name in ("pytorch_model.bin", "model.pt") if (path / name).exists()][:1]
        if not files:
            raise CheckpointError(f"{path}: no weights found (expected model.safetensors, pytorch_model.bin, "
                                  "or an index of shards)")
    state, sources = {}, {}
    for name in files:
        part = _read_safetensors(path / name) if name.endswith(".safetensors") else _read_torch(path / name)
        state.update(part)
        sources.update(dict.fromkeys(part, name))
    return state, sources


def _shards(index: Path) -> list[str]:
    try:
        names = set(json.loads(index.read_text(encoding="utf-8"))["weight_map"].values())
    except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError, AttributeError) as err:
        raise CheckpointError(f"{index}: not a shard index (expected JSON with a weight_map): {err}") from err
    if not all(isinstance(n, str) for n in names):
        raise CheckpointError(f"{index}: not a shard index (its weight_map must map tensor names to file names, "
                              f"got {sorted(map(repr, names))[:3]})")
    return sorted(names)


def _read_torch(f: Path) -> dict:
    try:
        state = torch.load(f, map_location="cpu", weights_only=True)
    except Exception as err:
        raise (_lfs_pointer(f) or CheckpointError(f"{f}: cannot read weights (truncated or corrupt?): {err}")) from err
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise CheckpointError(f"{f}: expected a dict of tensors (a state_dict), got {type(state).__name__}")
    return state


def _quoted(keys: list[str], where) -> str:
    shown = ", ".join(where(k) for k in keys[:5])
    return shown + (f" and {len(keys) - 5} more" if len(keys) > 5 else "")


def load_checked(config, state: dict, path: Path, dtype=None, device=None, where=None):
    """Build LM(config) and fill it from `state`; any missing, unexpected or misshapen key is an error.

    where(key) names a tensor for messages: the file that holds it and its key there (default:
    the key alone). With `dtype`, every tensor but A_log and D is cast to it (cast_keeping_fp32)."""
    from ..model import LM
    where = where or repr
    with torch.device("meta"):
        model = LM(config)
    expected = {k: v for k, v in model.state_dict().items()}
    if config.tie_embeddings:
        expected.pop("lm_head.weight", None)
        head, emb = state.get("lm_head.weight"), state.get("embedding.weight")
        if head is not None and emb is not None and (head.shape != emb.shape or not torch.equal(head, emb)):
            # transformers ties such a model too and drops the head; say so rather than drop it silently
            logging.getLogger("mambakit").warning(
                "%s: config.json ties the head to the embedding, but the file's lm_head.weight differs from "
                "it; the head is ignored (set tie_embeddings / tie_word_embeddings false to use it)", path)
        state = {k: v for k, v in state.items() if k != "lm_head.weight"}
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    if missing or unexpected:
        parts = []
        if missing:
            parts.append(f"missing tensors {_quoted(missing, where)}")
        if unexpected:
            parts.append(f"unexpected tensors {_quoted(unexpected, where)}")
        raise CheckpointError(f"{path}: weights do not match config.json: " + "; ".join(parts))
    for key, ref in expected.items():
        if tuple(state[key].shape) != tuple(ref.shape):
            raise CheckpointError(f"{path}: tensor {where(key)} has shape {tuple(state[key].shape)}, "
                                  f"config.json implies {tuple(ref.shape)}")
        if ref.is_floating_point() and not state[key].is_floating_point():
            # copy_ would cast integers into the weights without a word: a mislabeled or corrupt file
            raise CheckpointError(f"{path}: tensor {where(key)} has dtype {state[key].dtype}; "
                                  "expected floating-point weights")
    if dtype is not None:
        cast_keeping_fp32(model, dtype)  # still on "meta": the weights are allocated once, in their dtype
    model = model.to_empty(device=device or "cpu")
    if config.tie_embeddings:
        model.lm_head.weight = model.embedding.weight
    with torch.no_grad():
        for key, tensor in model.state_dict().items():
            if key in state:  # the tied head is filled through the embedding
                tensor.copy_(state[key].to(tensor.dtype))
    return model.eval()


# parameter names that a cast to a 16-bit dtype leaves in fp32; S4D's log_dt and A_imag too: bf16's
# spacing of 1/32 at log_dt ~ -4.6 and of 1/2 at A_imag = pi n ~ 97 moved its kernels by up to 65%
KEPT_FP32 = ("A_log", "D", "log_dt", "A_imag")


def cast_keeping_fp32(model, dtype: torch.dtype):
    """model.to(dtype), except parameters named in KEPT_FP32, which stay at least fp32: the decays
    exp(dt A) are sensitive to A's rounding (mamba_ssm keeps Mamba-1's A_log and D, and Mamba-2's D,
    in fp32; S4D's step sizes and frequencies likewise). Code that needs one dtype for every parameter (FSDP) calls model.to(dtype) after."""
    keep = dtype if torch.finfo(dtype).bits >= 32 else torch.float32
    for module in model.modules():
        for name, param in module.named_parameters(recurse=False):
            if param.is_floating_point():
                param.data = param.data.to(keep if name in KEPT_FP32 else dtype)
        for name, buf in module.named_buffers(recurse=False):
            if buf.is_floating_point():
                module._buffers[name] = buf.to(dtype)
    return model


# Files that hold a checkpoint's config or weights: a save replaces all of them. Anything else in
# the folder (a tokenizer, a README, generation settings) is carried into the new folder.
_CHECKPOINT_FILES = ("config.json", "model.safetensors", "pytorch_model.bin", "model.pt") + _INDEXES


def _checkpoint_files(path: Path) -> set[str]:
    names = {n for n in _CHECKPOINT_FILES if (path / n).exists()}
    for index in _INDEXES:
        if (path / index).exists():
            try:
                names |= set(_shards(path / index))
            except CheckpointError:
                pass  # a broken index is replaced; its shards, unknown, stay as other files
    return names


def new_folder_mode() -> int:
    """The mode os.mkdir would give a new folder: 0o777 less the process's umask."""
    mask = os.umask(0o022)  # reading the umask means setting it: put it straight back
    os.umask(mask)
    return 0o777 & ~mask


def copy_other_files(src: Path, dst: Path, *, link: bool = False, overwrite: bool = False,
                     skip_hidden: bool = False, leave=()) -> list[str]:
    """Copy the files and folders of checkpoint folder `src` that are not its checkpoint (tokenizer,
    README, ...) into `dst`; -> their names. link: hard links where the filesystem allows (for a
    folder about to be dropped); overwrite: replace dst's items of the same name, else keep them;
    skip_hidden: leave out .names (.git, caches); leave: folders not to copy, nor any folder holding one."""
    skip = _checkpoint_files(src)
    # A copy into another folder takes what a link points to: the files of a Hugging Face cache
    # snapshot are relative links into ../../blobs, which would dangle anywhere else.
    copy = _link_or_copy if link else _copy_following
    copied = []
    for item in sorted(src.iterdir()):
        target = dst / item.name
        if item.name in skip or (skip_hidden and item.name.startswith(".")) or any(
                item == p or item in p.parents for p in leave):
            continue
        if target.exists() or target.is_symlink():
            if not overwrite:
                continue
            if target.is_dir() and not target.is_symlink():
                shutil.rmtree(target)
            else:
                target.unlink()
        if item.is_dir() and (link is False or not item.is_symlink()):
            shutil.copytree(item, target, symlinks=link, copy_function=copy)
        else:
            copy(item, target)
        copied.append(item.name)
    return copied


def _copy_following(src, dst) -> None:
    if os.path.islink(src) and not os.path.exists(src):  # a dangling link: nothing to copy but the link
        os.symlink(os.readlink(src), dst)
        return
    shutil.copy2(src, dst)


def _link_or_copy(src, dst) -> None:
    if os.path.islink(src):
        os.symlink(os.readlink(src), dst)
        return
    try:
        os.link(src, dst)
    except OSError:  # another filesystem, or links not allowed
        shutil.copy2(src, dst)


def check_replaceable(path: Path) -> None:
    """A checkpoint is written to a new folder, an empty one, or one holding a checkpoint (replaced, its
    other files kept): a folder of other files (an app's config.json, a user's model.pt) is refused."""
    if not (path.is_dir() and any(path.iterdir())):
        return
    from . import detect_format
    try:
        detect_format(read_config(path), path)
    except ValueError:
        raise ValueError(f"{path} holds files and is not a checkpoint folder; write the checkpoint to a new or "
                         "empty folder (an existing checkpoint folder is replaced, its other files kept)") from None


def replace_folder(new: Path, dst: Path) -> None:
    """Rename the folder `new` to `dst`, replacing the folder there if there is one. The old folder is
    moved aside first (.NAME.old-PID beside it) and back again if the second rename fails, so `dst`
    is never left missing by a failed swap; it is removed once the new folder is in place. Only a
    crash between the two renames leaves the old folder whole under its aside name."""
    if not dst.exists():
        os.replace(new, dst)
        return
    old = dst.with_name(f".{dst.name}.old-{os.getpid()}")
    os.replace(dst, old)
    try:
        os.replace(new, dst)
    except BaseException:
        os.replace(old, dst)
        raise
    shutil.rmtree(old, ignore_errors=True)


def write_folder(path: Path, raw_config: dict, state: dict[str, torch.Tensor]) -> None:
    """Write config.json + model.safetensors into `path` atomically: a temporary folder beside it,
    then renamed. Over an existing checkpoint folder, its other files (tokenizer, README, ...) are
    carried over and its old weight files dropped; a crash between the two renames leaves the old
    folder whole under .NAME.old-PID."""
    from safetensors.torch import save_file
    if not isinstance(path, (str, os.PathLike)):
        raise ValueError(f"a checkpoint path is a str or a Path, got {type(path).__name__}")
    path = Path(path).absolute()
    if path.name in ("", ".", "..") or ".." in path.parts:
        path = path.resolve()  # "." or "a/..": the folder itself, whose name and parent are needed below
    blocking = next((p for p in path.parents if p.exists() and not p.is_dir()), None)
    if blocking is not None:
        raise ValueError(f"cannot save to {path}: {blocking} is a file, not a folder")
    if path.is_symlink():
        path = path.resolve()  # a link to a checkpoint folder: the folder it points to is replaced
    if path.exists() and not path.is_dir():
        raise ValueError(f"{path} is a file; a checkpoint is a folder (pass a new or existing folder path)")
    try:
        cwd = Path.cwd()
    except OSError:  # the working folder was removed
        cwd = None
    if cwd is not None and path.exists() and (path == cwd or path in cwd.parents):
        # the folder is replaced by a rename: the process (and a shell) would be left in a deleted folder
        raise ValueError(f"cannot write a checkpoint over {path}, the current working folder or one around it; "
                         "save to a folder of its own (e.g. a subfolder)")
    check_replaceable(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.tmp-", dir=path.parent))
    # mkdtemp makes it 0700: give it the mode of the folder it replaces, else that of a new folder
    os.chmod(tmp, path.stat().st_mode & 0o7777 if path.is_dir() else new_folder_mode())
    try:
        (tmp / "config.json").write_text(json.dumps(raw_config, indent=2))
        save_file({k: v.detach().contiguous().cpu() for k, v in state.items()}, str(tmp / "model.safetensors"),
                  metadata={"format": "pt"})
        if path.exists():
            copy_other_files(path, tmp, link=True)  # hard links (same filesystem): nothing is copied
        replace_folder(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
