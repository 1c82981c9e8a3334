"""hub: locating models (local / hub cache), diffusers file naming, safe and checked loading."""

import json
import os
import pickle
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from vidcore import hub
from vidcore.errors import CheckpointError, ConfigError, ModelNotFoundError, VidcoreError

STEM = "diffusion_pytorch_model"


def tensors(seed=0, n=4):
    g = torch.Generator().manual_seed(seed)
    return {f"layer.{i}.weight": torch.randn(3, 5, generator=g) for i in range(n)}


def write_sharded(folder: Path, sd, variant=None, n_shards=2, legacy_index=False):
    """Write `sd` the way diffusers' save_pretrained shards it (names from its `_add_variant` scheme)."""
    keys = list(sd)
    weights = f"{STEM}.{variant}.safetensors" if variant else f"{STEM}.safetensors"
    weight_map = {}
    for s in range(n_shards):
        name = weights.replace(".safetensors", f"-{s + 1:05d}-of-{n_shards:05d}.safetensors")
        part = {k: sd[k] for k in keys[s::n_shards]}
        save_file(part, str(folder / name))
        weight_map.update({k: name for k in part})
    if variant is None:
        index = f"{STEM}.safetensors.index.json"
    elif legacy_index:
        index = f"{STEM}.safetensors.{variant}.index.json"
    else:
        index = f"{STEM}.safetensors.index.{variant}.json"
    (folder / index).write_text(json.dumps({"metadata": {"total_size": 0}, "weight_map": weight_map}))
    return folder / index


def assert_same(a, b):
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)


# --------------------------------------------------------------------------- resolve


def test_resolve_local_folder_subfolder_and_file(tmp_path):
    (tmp_path / "unet").mkdir()
    (tmp_path / "model.safetensors").write_bytes(b"")
    assert hub.resolve(tmp_path) == tmp_path
    assert hub.resolve(str(tmp_path), subfolder="unet") == tmp_path / "unet"
    assert hub.resolve(tmp_path / "model.safetensors") == tmp_path / "model.safetensors"
    with pytest.raises(ModelNotFoundError, match="has no subfolder 'vae'"):
        hub.resolve(tmp_path, subfolder="vae")


def test_resolve_missing_local_path_is_one_line(tmp_path):
    with pytest.raises(ModelNotFoundError) as exc:
        hub.resolve(tmp_path / "nope")
    msg = str(exc.value)
    assert msg.startswith(f"model '{tmp_path / 'nope'}' is not a local folder and could not be fetched from the hub (")
    assert "\n" not in msg
    assert isinstance(exc.value, FileNotFoundError) and isinstance(exc.value, VidcoreError)


def test_resolve_unknown_repo_offline(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelNotFoundError) as exc:
        hub.resolve("vidcore-tests/no-such-model", cache_dir=tmp_path)
    msg = str(exc.value)
    assert msg == (
        "model 'vidcore-tests/no-such-model' is not a local folder and could not be fetched from the hub "
        "(HF_HUB_OFFLINE is set and it is not in the local cache)"
    )


def test_resolve_uses_hub_cache_offline(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    commit = "a" * 40
    repo = tmp_path / "models--vidcore-tests--tiny"
    snap = repo / "snapshots" / commit
    (snap / "unet").mkdir(parents=True)
    (snap / "unet" / "config.json").write_text("{}")
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    assert hub.resolve("vidcore-tests/tiny", cache_dir=tmp_path) == snap
    assert hub.resolve("vidcore-tests/tiny", subfolder="unet", cache_dir=tmp_path) == snap / "unet"
    with pytest.raises(ModelNotFoundError, match="no subfolder 'vae'"):
        hub.resolve("vidcore-tests/tiny", subfolder="vae", cache_dir=tmp_path)


# --------------------------------------------------------------------------- weight_files


def test_variant_selection(tmp_path):
    plain, half = tensors(0), {k: v.half() for k, v in tensors(1).items()}
    save_file(plain, str(tmp_path / f"{STEM}.safetensors"))
    save_file(half, str(tmp_path / f"{STEM}.fp16.safetensors"))
    assert hub.weight_files(tmp_path) == [tmp_path / f"{STEM}.safetensors"]
    assert hub.weight_files(tmp_path, variant="fp16") == [tmp_path / f"{STEM}.fp16.safetensors"]
    assert_same(hub.load_state_dict(hub.weight_files(tmp_path, "fp16")), half)
    with pytest.warns(UserWarning, match="no 'ema' variant weights"):
        assert hub.weight_files(tmp_path, variant="ema") == [tmp_path / f"{STEM}.safetensors"]


def test_safetensors_preferred_over_pickle_and_pickle_fallbacks(tmp_path):
    torch.save(tensors(0), tmp_path / f"{STEM}.bin")
    assert hub.weight_files(tmp_path) == [tmp_path / f"{STEM}.bin"]
    save_file(tensors(0), str(tmp_path / f"{STEM}.safetensors"))
    assert hub.weight_files(tmp_path) == [tmp_path / f"{STEM}.safetensors"]
    other = tmp_path / "motion"
    other.mkdir()
    torch.save(tensors(0), other / "mm.ckpt")
    assert hub.weight_files(other, stem="mm") == [other / "mm.ckpt"]
    assert hub.weight_files(other / "mm.ckpt") == [other / "mm.ckpt"]
    with pytest.raises(ModelNotFoundError, match="no weights found in"):
        hub.weight_files(other)
    with pytest.raises(ModelNotFoundError, match="does not exist"):
        hub.weight_files(tmp_path / "absent")


@pytest.mark.parametrize("variant,legacy", [(None, False), ("fp16", False), ("fp16", True)])
def test_sharded_checkpoint(tmp_path, variant, legacy):
    sd = tensors(2, n=5)
    save_file(tensors(3), str(tmp_path / f"{STEM}.safetensors"))  # a sharded variant wins over this
    write_sharded(tmp_path, sd, variant=variant, n_shards=3, legacy_index=legacy)
    files = hub.weight_files(tmp_path, variant=variant)
    if variant is None:  # diffusers prefers the index over the single file
        assert [f.name for f in files] == [f"{STEM}-0000{i}-of-00003.safetensors" for i in (1, 2, 3)]
    else:
        assert [f.name for f in files] == [f"{STEM}.fp16-0000{i}-of-00003.safetensors" for i in (1, 2, 3)]
    assert_same(hub.load_state_dict(files), sd)


def test_diffusers_save_pretrained_layout_is_understood(tmp_path):
    """The real file names diffusers writes for a sharded fp16 variant."""
    diffusers = pytest.importorskip("diffusers")
    from diffusers.configuration_utils import ConfigMixin, register_to_config

    class Tiny(diffusers.ModelMixin, ConfigMixin):
        @register_to_config
        def __init__(self, dim: int = 32):
            super().__init__()
            self.a = torch.nn.Linear(dim, dim)
            self.b = torch.nn.Linear(dim, dim)

    model = Tiny()
    model.save_pretrained(tmp_path / "v", variant="fp16", max_shard_size="5KB")
    model.save_pretrained(tmp_path / "p")
    sharded = hub.weight_files(tmp_path / "v", variant="fp16")
    assert len(sharded) > 1
    assert_same(hub.load_state_dict(sharded), model.state_dict())
    assert_same(hub.load_state_dict(hub.weight_files(tmp_path / "p")), model.state_dict())
    assert hub.load_config(tmp_path / "p")["dim"] == 32


def test_missing_shard_is_named(tmp_path):
    write_sharded(tmp_path, tensors(0), n_shards=2)
    (tmp_path / f"{STEM}-00002-of-00002.safetensors").unlink()
    with pytest.raises(CheckpointError, match=f"missing: {STEM}-00002-of-00002.safetensors"):
        hub.weight_files(tmp_path)


def test_index_with_path_in_shard_name_is_refused(tmp_path):
    index = write_sharded(tmp_path, tensors(0), n_shards=1)
    data = json.loads(index.read_text())
    data["weight_map"]["layer.0.weight"] = "../elsewhere.safetensors"
    index.write_text(json.dumps(data))
    with pytest.raises(CheckpointError, match="refusing shard name '../elsewhere.safetensors'"):
        hub.weight_files(tmp_path)
    index.write_text("{not json")
    with pytest.raises(CheckpointError, match="not a valid sharded-checkpoint index"):
        hub.weight_files(tmp_path)


def test_duplicate_key_across_shards(tmp_path):
    save_file({"w": torch.ones(2)}, str(tmp_path / "a.safetensors"))
    save_file({"w": torch.zeros(2)}, str(tmp_path / "b.safetensors"))
    with pytest.raises(CheckpointError, match="key 'w' appears in two shards: .*a.safetensors and .*b.safetensors"):
        hub.load_state_dict([tmp_path / "a.safetensors", tmp_path / "b.safetensors"])


# --------------------------------------------------------------------------- load_state_dict safety


def test_truncated_safetensors(tmp_path):
    good = tmp_path / "good.safetensors"
    save_file(tensors(0), str(good))
    data = good.read_bytes()
    bad = tmp_path / "cut.safetensors"
    bad.write_bytes(data[: len(data) - 50])
    with pytest.raises(CheckpointError, match=r"cut\.safetensors: safetensors file is corrupt or truncated"):
        hub.load_state_dict(bad)
    bad.write_bytes(data[:5])
    with pytest.raises(CheckpointError, match=r"cut\.safetensors: .*corrupt or truncated"):
        hub.load_state_dict(bad)


def test_corrupt_safetensors_bytes(tmp_path):
    bad = tmp_path / "junk.safetensors"
    bad.write_bytes(os.urandom(16) + b"\xff" * 100)
    with pytest.raises(CheckpointError, match=r"junk\.safetensors: .*corrupt or truncated"):
        hub.load_state_dict(bad)
    header = b'{"w": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}'  # cut-off JSON header
    bad.write_bytes(len(header).to_bytes(8, "little") + header + b"\0" * 8)
    with pytest.raises(CheckpointError, match=r"junk\.safetensors: .*corrupt or truncated"):
        hub.load_state_dict(bad)


class _Exploit:
    """Unpickling this would run a shell command."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")
@pytest.mark.parametrize("writer", ["torch.save", "pickle.dump"])
def test_malicious_pickle_is_refused_and_not_run(tmp_path, writer):
    control = tmp_path / "control"
    pickle.loads(pickle.dumps(_Exploit(control)))  # the payload is live: plain unpickling runs it
    assert control.exists()
    marker = tmp_path / "PWNED"
    path = tmp_path / f"{STEM}.bin"
    payload = {"w": torch.ones(2), "x": _Exploit(marker)}
    if writer == "torch.save":
        torch.save(payload, path)
    else:
        with open(path, "wb") as f:
            pickle.dump(payload, f)
    with pytest.raises(CheckpointError) as exc:
        hub.load_state_dict(hub.weight_files(tmp_path))
    msg = str(exc.value)
    assert msg.startswith(f"refusing to load {path}: it contains code or unsupported objects")
    assert "weights_only` set to `False`" not in msg  # no advice to disable the safety
    assert not marker.exists()


def test_safe_pickles_load(tmp_path):
    sd = tensors(0)
    torch.save(sd, tmp_path / "plain.bin")
    assert_same(hub.load_state_dict(tmp_path / "plain.bin"), sd)
    torch.save(sd, tmp_path / "legacy.pth", _use_new_zipfile_serialization=False)
    assert_same(hub.load_state_dict(str(tmp_path / "legacy.pth")), sd)
    torch.save({"state_dict": sd, "global_step": 7}, tmp_path / "wrapped.ckpt")
    assert_same(hub.load_state_dict(tmp_path / "wrapped.ckpt"), sd)
    torch.save({**sd, "epoch": 3}, tmp_path / "extra.ckpt")
    with pytest.warns(UserWarning, match="ignoring non-tensor entries \\['epoch'\\]"):
        assert_same(hub.load_state_dict(tmp_path / "extra.ckpt"), sd)
    torch.save([torch.ones(1)], tmp_path / "list.bin")
    with pytest.raises(CheckpointError, match="expected a dict of tensors, found list"):
        hub.load_state_dict(tmp_path / "list.bin")


def test_truncated_pickle(tmp_path):
    torch.save(tensors(0), tmp_path / "full.bin")
    data = (tmp_path / "full.bin").read_bytes()
    (tmp_path / "cut.bin").write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match=r"cut\.bin: pickled checkpoint is corrupt or truncated"):
        hub.load_state_dict(tmp_path / "cut.bin")
    with pytest.raises(ModelNotFoundError, match="does not exist"):
        hub.load_state_dict(tmp_path / "absent.safetensors")


# --------------------------------------------------------------------------- config, dtype, imports


def test_load_config(tmp_path):
    (tmp_path / "config.json").write_text('{"in_channels": 4}')
    assert hub.load_config(tmp_path) == {"in_channels": 4}
    assert hub.load_config(tmp_path / "config.json") == {"in_channels": 4}
    with pytest.raises(ModelNotFoundError, match="scheduler_config.json' does not exist"):
        hub.load_config(tmp_path, "scheduler_config.json")
    (tmp_path / "bad.json").write_text('{"in_channels": 4,')
    with pytest.raises(ConfigError, match=r"bad\.json: not valid JSON"):
        hub.load_config(tmp_path, "bad.json")
    (tmp_path / "list.json").write_text("[1]")
    with pytest.raises(ConfigError, match="expected a JSON object, found list"):
        hub.load_config(tmp_path, "list.json")


def test_parse_dtype():
    assert hub.parse_dtype(None) is None
    assert hub.parse_dtype(torch.bfloat16) is torch.bfloat16
    for name in ("fp16", "float16", "FP16", "torch.float16", "half"):
        assert hub.parse_dtype(name) is torch.float16
    assert hub.parse_dtype("bf16") is torch.bfloat16
    assert hub.parse_dtype("fp32") is torch.float32
    with pytest.raises(ValueError, match="torch_dtype must be .* got 'int8'"):
        hub.parse_dtype("int8")


def test_no_diffusers_import(tmp_path):
    code = "import sys, vidcore.hub, vidcore.errors, vidcore.conversion.engine; assert 'diffusers' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True, cwd=tmp_path)  # repo root off sys.path
